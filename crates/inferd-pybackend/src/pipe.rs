//! The worker's output pipe as the reader thread reads it: through a buffer (a message costs
//! one `read`, not one for its length and one for its body), and, while a call waits for its
//! answer, polled for a short while before the thread sleeps. A sleeping reader is woken by
//! the worker's write, and on a virtual machine that wake-up took about as long as a small
//! model's whole `execute` (bench/results/python-backend-2026-12-07.md); the poll offers the
//! core to any other runnable thread between tries, so under load it costs little.

// One of the two modules of this crate with unsafe code (see Cargo.toml): fcntl and poll.
#![allow(unsafe_code)]

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// How long the reader polls for an answer before it sleeps.
pub(crate) const ANSWER_POLL: Duration = Duration::from_micros(250);

/// A non-blocking pipe read through a buffer.
pub(crate) struct PipeReader<R> {
    file: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl<R: Read + AsRawFd> PipeReader<R> {
    /// Wraps `file`, made non-blocking (a failure leaves it blocking: reads still work, they
    /// only never poll).
    pub(crate) fn new(file: R) -> Self {
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this reader owns; flags read, then written with one
        // more bit.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        PipeReader {
            file,
            buf: vec![0; 64 << 10],
            pos: 0,
            len: 0,
        }
    }

    /// Fills `out` completely; `poll` says, when the pipe is empty, whether to poll for
    /// [`ANSWER_POLL`] before sleeping. `Ok(false)`: the pipe ended.
    pub(crate) fn read_full(
        &mut self,
        out: &mut [u8],
        poll: &dyn Fn() -> bool,
    ) -> io::Result<bool> {
        let mut got = 0;
        while got < out.len() {
            if self.pos == self.len && !self.fill(poll)? {
                return Ok(false);
            }
            let n = (self.len - self.pos).min(out.len() - got);
            out[got..got + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            got += n;
        }
        Ok(true)
    }

    fn fill(&mut self, poll: &dyn Fn() -> bool) -> io::Result<bool> {
        let mut until: Option<Instant> = None;
        loop {
            match self.file.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.pos = 0;
                    self.len = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            let until = *until.get_or_insert_with(|| if poll() { now + ANSWER_POLL } else { now });
            if now < until {
                std::thread::yield_now();
            } else {
                wait_readable(self.file.as_raw_fd())?;
            }
        }
    }
}

/// Sleeps until `fd` is readable (or hung up).
fn wait_readable(fd: RawFd) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, for the length given.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn messages_split_across_writes_and_buffer_ends_are_read_whole() {
        let (r, mut w) = std::io::pipe().expect("pipe");
        let mut reader = PipeReader::new(r);
        let writer = std::thread::spawn(move || {
            for chunk in [&b"ab"[..], b"cdefg", b"h"] {
                w.write_all(chunk).expect("write");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let mut first = [0u8; 3];
        let mut second = [0u8; 5];
        assert!(reader.read_full(&mut first, &|| true).expect("read"));
        assert!(reader.read_full(&mut second, &|| false).expect("read"));
        assert_eq!(&first, b"abc");
        assert_eq!(&second, b"defgh");
        writer.join().expect("writer");
        let mut more = [0u8; 1];
        assert!(
            !reader.read_full(&mut more, &|| false).expect("end"),
            "the pipe ended"
        );
    }
}
