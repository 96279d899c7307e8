//! A plugin's stdout and stderr, turned into log lines of the node.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A line longer than this is cut, so a plugin cannot grow host memory by
/// never writing a newline.
const MAX_LINE: usize = 4096;

/// Receives complete lines.
pub(crate) type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Clone)]
pub(crate) struct LineStream {
    buf: Arc<Mutex<Vec<u8>>>,
    sink: LineSink,
}

impl LineStream {
    pub(crate) fn new(sink: LineSink) -> LineStream {
        LineStream {
            buf: Arc::new(Mutex::new(Vec::new())),
            sink,
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        for &b in bytes {
            if b == b'\n' || buf.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                buf.clear();
                if !line.is_empty() {
                    (self.sink)(&line);
                }
                if b == b'\n' {
                    continue;
                }
            }
            buf.push(b);
        }
    }
}

impl IsTerminal for LineStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LineStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LineStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LineStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LineStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_becomes_whole_lines() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let l2 = lines.clone();
        let s = LineStream::new(Arc::new(move |l: &str| l2.lock().unwrap().push(l.to_string())));
        s.push(b"hel");
        s.push(b"lo\nwor");
        s.push(b"ld\n\n");
        s.push(&[b'x'; MAX_LINE + 10]);
        let got = lines.lock().unwrap().clone();
        assert_eq!(got[0], "hello");
        assert_eq!(got[1], "world");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got.len(), 3);
    }
}
