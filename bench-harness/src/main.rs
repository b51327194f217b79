//! `turn-bench` (under construction).

fn main() {}
