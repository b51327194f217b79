//! A TURN-over-TCP or TURN-over-TLS connection driven by the measuring loop
//! (RFC 8656 §3.1): non-blocking, with an input buffer cut into frames by
//! `relay_core::wire::next_frame` and an output buffer of frames waiting
//! for the socket.
//!
//! Both buffers are allocated once, when the flow is set up; frames are
//! written into the output buffer in place (template copy + probe) and
//! handed out of the input buffer as ranges, so nothing is allocated per
//! packet over TCP. Over TLS, rustls copies each batch of plaintext into a
//! record buffer of its own: one allocation per write batch (per loop turn
//! and flow), not per packet.

use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};

use relay_core::wire::{Frame, next_frame};

/// Input buffer size: several maximum-size frames.
const READ_BUF: usize = 256 * 1024;
/// Output held back before the flow stops taking new data packets (the
/// server reads too slowly; TCP does the rest of the pacing).
pub(crate) const WRITE_HIGH_WATER: usize = 128 * 1024;
/// Plaintext rustls may hold encrypted and unsent.
const TLS_BUFFER_LIMIT: usize = 256 * 1024;

/// One stream connection to the server.
#[derive(Debug)]
pub struct StreamConn {
    sock: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    closed: bool,
}

impl StreamConn {
    /// Takes over a connected TCP stream (TLS when `tls` is given); `pending`
    /// holds bytes already read (decrypted) and not yet framed.
    pub fn new(sock: TcpStream, tls: Option<rustls::ClientConnection>, pending: &[u8]) -> io::Result<StreamConn> {
        if pending.len() > READ_BUF {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "more unread input than the buffer holds"));
        }
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        let mut rbuf = vec![0u8; READ_BUF].into_boxed_slice();
        rbuf[..pending.len()].copy_from_slice(pending);
        let tls = tls.map(|mut c| {
            c.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
            Box::new(c)
        });
        Ok(StreamConn {
            sock,
            tls,
            rbuf,
            rstart: 0,
            rend: pending.len(),
            wbuf: Vec::with_capacity(WRITE_HIGH_WATER + 64 * 1024 + 4),
            wpos: 0,
            closed: false,
        })
    }

    /// Gives the stream back, blocking again, with the TLS session and the
    /// input not yet framed (to release the allocation afterwards).
    pub fn into_parts(self) -> io::Result<(TcpStream, Option<rustls::ClientConnection>, Vec<u8>)> {
        self.sock.set_nonblocking(false)?;
        let pending = self.rbuf[self.rstart..self.rend].to_vec();
        Ok((self.sock, self.tls.map(|b| *b), pending))
    }

    /// The socket's descriptor (for epoll).
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Whether the server closed the connection (or it failed).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Output bytes not yet taken by the socket (or by rustls); none once
    /// the connection is closed.
    pub fn backlog(&self) -> usize {
        if self.closed { 0 } else { self.wbuf.len() - self.wpos }
    }

    /// Whether the flow may take another data frame now.
    pub fn has_room(&self) -> bool {
        !self.closed && self.backlog() < WRITE_HIGH_WATER
    }

    /// Appends `frame` to the output, returning where it starts in the
    /// output buffer (see [`StreamConn::output_mut`]), padded with zeros
    /// to a multiple of 4 bytes (RFC 8656 §12.5: ChannelData over streams).
    pub fn queue(&mut self, frame: &[u8]) -> usize {
        if self.wpos == self.wbuf.len() || self.closed {
            // Nothing pending, or nothing will ever be sent: start over.
            self.wbuf.clear();
            self.wpos = 0;
        }
        let at = self.wbuf.len();
        self.wbuf.extend_from_slice(frame);
        let padded = (frame.len() + 3) & !3;
        self.wbuf.resize(at + padded, 0);
        at
    }

    /// The output buffer, to fill in a frame [`StreamConn::queue`] placed.
    pub fn output_mut(&mut self) -> &mut [u8] {
        &mut self.wbuf
    }

    /// Writes as much of the output as the socket takes now.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.flush_inner();
        if r.is_err() {
            self.closed = true;
        }
        r
    }

    fn flush_inner(&mut self) -> io::Result<()> {
        match self.tls.as_deref_mut() {
            None => {
                while self.wpos < self.wbuf.len() {
                    match self.sock.write(&self.wbuf[self.wpos..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => self.wpos += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(tls) => {
                if self.wpos < self.wbuf.len() {
                    // Bounded by the buffer limit: the rest stays queued.
                    let n = tls.writer().write(&self.wbuf[self.wpos..])?;
                    self.wpos += n;
                }
                while tls.wants_write() {
                    match tls.write_tls(&mut self.sock) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos > WRITE_HIGH_WATER {
            // Keep the buffer from creeping: move the rest to the front.
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }

    /// Reads what the socket has (one read, decrypted when TLS). Returns
    /// `Ok(false)` when nothing more can be read now.
    pub fn fill(&mut self) -> io::Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let r = self.fill_inner();
        if r.is_err() {
            self.closed = true;
        }
        r
    }

    fn fill_inner(&mut self) -> io::Result<bool> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rend == self.rbuf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a frame larger than the input buffer"));
        }
        match self.tls.as_deref_mut() {
            None => loop {
                match self.sock.read(&mut self.rbuf[self.rend..]) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")),
                    Ok(n) => {
                        self.rend += n;
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            },
            Some(tls) => {
                // Plaintext rustls already holds comes first.
                match tls.reader().read(&mut self.rbuf[self.rend..]) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the TLS session")),
                    Ok(n) => {
                        self.rend += n;
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                let got = loop {
                    match tls.read_tls(&mut self.sock) {
                        Ok(0) => {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
                        }
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) => return Err(e),
                    }
                };
                tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                match tls.reader().read(&mut self.rbuf[self.rend..]) {
                    Ok(n) => self.rend += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                Ok(got > 0)
            }
        }
    }

    /// The next whole frame in the input, as a range of
    /// [`StreamConn::input`]; consumed by this call.
    pub fn next_frame(&mut self) -> io::Result<Option<Range<usize>>> {
        let n = match next_frame(&self.rbuf[self.rstart..self.rend]) {
            Ok(Frame::Stun(n) | Frame::ChannelData(n)) => n,
            Ok(Frame::NeedMore(_)) => return Ok(None),
            Err(e) => {
                self.closed = true;
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("stream framing: {e}")));
            }
        };
        let r = self.rstart..self.rstart + n;
        self.rstart += n;
        Ok(Some(r))
    }

    /// The input buffer (frames are ranges of it).
    pub fn input(&self) -> &[u8] {
        &self.rbuf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn frames_are_padded_out_and_cut_in() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        // A ChannelData frame of 5 bytes, and a pending partial one.
        let mut c = StreamConn::new(client, None, &[0x40, 0x00, 0x00, 0x02, 9]).unwrap();
        let at = c.queue(&[0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
        assert_eq!((at, c.backlog()), (0, 12));
        c.output_mut()[at + 4] = 7;
        c.flush().unwrap();
        assert_eq!(c.backlog(), 0);
        let mut got = [0u8; 12];
        server.read_exact(&mut got).unwrap();
        assert_eq!(got, [0x40, 0x01, 0x00, 0x05, 7, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(c.next_frame().unwrap(), None);
        // The rest of the pending frame, its padding, and a whole one.
        server.write_all(&[10, 0, 0, 0x40, 0x00, 0x00, 0x00]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut frames = Vec::new();
        while frames.len() < 2 && std::time::Instant::now() < deadline {
            c.fill().unwrap();
            while let Some(r) = c.next_frame().unwrap() {
                frames.push(c.input()[r].to_vec());
            }
        }
        assert_eq!(frames, vec![vec![0x40, 0, 0, 2, 9, 10, 0, 0], vec![0x40, 0, 0, 0]]);
        assert!(!c.is_closed());
        drop(server);
        while c.fill().is_ok_and(|_| std::time::Instant::now() < deadline) {}
        assert!(c.is_closed());
    }
}
