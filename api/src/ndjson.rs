//! Newline-delimited JSON, the shape of every stream the hub serves (the
//! node's assignment stream, watches, logs): one message per line, `{}`
//! keepalives skipped, every line bounded before it is held.

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

/// The longest line accepted: every assignment of a node with its config
/// fits many times over, and a peer that sends more is not trusted with
/// this process's memory.
pub const MAX_LINE: usize = 8 << 20;

/// Why a line of the stream was not a message.
#[derive(Debug, thiserror::Error)]
pub enum NdjsonError {
    #[error("a line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("reading the stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("a line that is not a message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Newline-delimited JSON: one `T` per line, `{}` keepalives skipped.
pub struct Ndjson<T> {
    lines: LinesCodec,
    _message: PhantomData<fn() -> T>,
}

impl<T> Default for Ndjson<T> {
    fn default() -> Self {
        Ndjson::new()
    }
}

impl<T> Ndjson<T> {
    pub fn new() -> Ndjson<T> {
        Ndjson {
            lines: LinesCodec::new_with_max_length(MAX_LINE),
            _message: PhantomData,
        }
    }

    fn message(line: Option<String>) -> Result<Option<Option<T>>, NdjsonError>
    where
        T: DeserializeOwned,
    {
        let Some(line) = line else { return Ok(None) };
        let line = line.trim();
        if line.is_empty() || line == "{}" {
            return Ok(Some(None));
        }
        Ok(Some(Some(serde_json::from_str(line)?)))
    }
}

fn lines_error(e: LinesCodecError) -> NdjsonError {
    match e {
        LinesCodecError::MaxLineLengthExceeded => NdjsonError::TooLong,
        LinesCodecError::Io(e) => NdjsonError::Io(e),
    }
}

impl<T: DeserializeOwned> Ndjson<T> {
    /// The next message `next_line` yields, past keepalives.
    fn next(
        &mut self,
        buf: &mut BytesMut,
        next_line: fn(&mut LinesCodec, &mut BytesMut) -> Result<Option<String>, LinesCodecError>,
    ) -> Result<Option<T>, NdjsonError> {
        loop {
            match Self::message(next_line(&mut self.lines, buf).map_err(lines_error)?)? {
                None => return Ok(None),
                Some(None) => continue,
                Some(Some(m)) => return Ok(Some(m)),
            }
        }
    }
}

impl<T: DeserializeOwned> Decoder for Ndjson<T> {
    type Item = T;
    type Error = NdjsonError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<T>, NdjsonError> {
        self.next(buf, LinesCodec::decode)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<T>, NdjsonError> {
        self.next(buf, LinesCodec::decode_eof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::NodeMessage;
    use bytes::BufMut;

    fn decode_all(chunks: &[&[u8]]) -> Vec<Result<NodeMessage, String>> {
        let mut codec = Ndjson::<NodeMessage>::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.put_slice(c);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(m)) => out.push(Ok(m)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e.to_string()));
                        break;
                    }
                }
            }
        }
        while let Ok(Some(m)) = codec.decode_eof(&mut buf) {
            out.push(Ok(m));
        }
        out
    }

    #[test]
    fn messages_split_across_chunks_are_reassembled_and_keepalives_skipped() {
        let got = decode_all(&[
            b"{}\n{\"node\":\"pi4\",\"plugins\":[]",
            b"}\n{}\n",
            b"{\"command\":{\"id\":7,\"plugin\":\"buzzer\",\"name\":\"triple\"}}",
            b"\n",
        ]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(&got[0], Ok(NodeMessage::Assignments(a)) if a.plugins.is_empty()));
        assert!(matches!(&got[1], Ok(NodeMessage::Command { command }) if command.id == 7 && command.name == "triple"));
    }

    #[test]
    fn a_line_that_is_not_a_message_is_an_error() {
        let got = decode_all(&[b"{\"plugins\": 5}\n"]);
        assert!(matches!(&got[..], [Err(e)] if e.contains("not a message")), "{got:?}");
    }

    #[test]
    fn a_line_past_the_bound_is_refused_before_it_is_held() {
        let mut codec = Ndjson::<NodeMessage>::new();
        let mut buf = BytesMut::new();
        buf.put_bytes(b'x', MAX_LINE + 1);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, NdjsonError::TooLong), "{err}");
    }
}
