//! [`MemSocket`]: an in-memory stream socket for sans-IO stream code
//! (relay-io's `StreamConn` unit tests and its fuzz target).

use std::io::{self, Read, Write};

/// An in-memory socket: `input` is what the client sent (then a read
/// would block, or the stream ends with `eof`); writes go to `output`, at
/// most `room` bytes more before a write would block. `writes` counts the
/// write calls that took bytes.
#[derive(Debug, Default)]
pub struct MemSocket {
    /// What the peer sent.
    pub input: Vec<u8>,
    /// How much of `input` was read.
    pub at: usize,
    /// The stream ends after `input` (reads return 0, not WouldBlock).
    pub eof: bool,
    /// What was written.
    pub output: Vec<u8>,
    /// Bytes a write may still take before it would block.
    pub room: usize,
    /// Write calls that took bytes.
    pub writes: usize,
}

impl MemSocket {
    /// An open socket with unlimited room.
    pub fn open() -> MemSocket {
        MemSocket { room: usize::MAX, ..MemSocket::default() }
    }
}

impl Read for MemSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.input.len() {
            return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(self.input.len() - self.at);
        buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for MemSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    /// As writev: as much of every buffer as there is room for, in one
    /// call (rustls writes its records so).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            let k = b.len().min(self.room);
            self.output.extend_from_slice(&b[..k]);
            self.room -= k;
            n += k;
            if k < b.len() {
                break;
            }
        }
        self.writes += 1;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
