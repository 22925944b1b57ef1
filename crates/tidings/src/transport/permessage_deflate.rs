//! permessage-deflate (RFC 7692) for `/ws`: the extension negotiation, the
//! compression of one message, and [`InflatingIo`], which inflates the
//! client's compressed messages under tungstenite (which has no extension
//! support and refuses frames with RSV1 set).
//!
//! The invariant: the server compresses without context takeover, so a
//! message's compressed form depends on its payload alone and one compressed
//! frame serves every connection that negotiated the extension; and no
//! connection keeps a compressor or decompressor while idle (the server asks
//! for `client_no_context_takeover` too, so a decompressor lives only while
//! one compressed message arrives).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The extension's name in `Sec-WebSocket-Extensions`.
const EXTENSION: &str = "permessage-deflate";
/// The answer to an acceptable offer without `server_max_window_bits`: no
/// context takeover in either direction, the default (largest) window.
pub const ACCEPTED_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// What RFC 7692 §7.2.1 has the sender strip from the end of a message
/// compressed with a sync flush, and the receiver append before inflating.
const SYNC_FLUSH_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An accepted permessage-deflate offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The window the client asked the server to stay within, if it did.
    server_max_window_bits: Option<u8>,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` answer.
    pub fn response(&self) -> String {
        match self.server_max_window_bits {
            None => ACCEPTED_RESPONSE.to_owned(),
            Some(bits) => format!("{ACCEPTED_RESPONSE}; server_max_window_bits={bits}"),
        }
    }

    /// Whether the server sends compressed messages on this connection.
    ///
    /// Every event is compressed once with the default 32 KiB window and that
    /// one frame is shared; a client that asked for a smaller window gets
    /// plain frames (a message with RSV1 clear is always allowed), which keeps
    /// that promise without a compressed copy per window size. Its own
    /// compressed messages are still read.
    pub fn compresses_outgoing(&self) -> bool {
        self.server_max_window_bits.is_none_or(|bits| bits == 15)
    }
}

/// The first permessage-deflate offer among the `Sec-WebSocket-Extensions`
/// header values that the server accepts, in the client's order.
///
/// An offer is declined, and the next one tried, when it has an unknown or
/// repeated parameter or a malformed value. `None` (no acceptable offer)
/// leaves the connection uncompressed; the handshake never fails over it.
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreement> {
    header_values.into_iter().find_map(|value| {
        let value = std::str::from_utf8(value).ok()?;
        split_outside_quotes(value, ',').find_map(|offer| accept_offer(offer.trim()))
    })
}

/// One extension offer: `name *( ";" param [ "=" value ] )`.
fn accept_offer(offer: &str) -> Option<Agreement> {
    let mut parts = split_outside_quotes(offer, ';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION))
    {
        return None;
    }
    let mut agreement = Agreement {
        server_max_window_bits: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        let acceptable = match name.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // The client's compressor may use any window; the server inflates
            // with the largest, which reads them all.
            "client_max_window_bits" => value.is_none_or(|bits| window_bits(bits).is_some()),
            "server_max_window_bits" => {
                agreement.server_max_window_bits = value.and_then(window_bits);
                agreement.server_max_window_bits.is_some()
            }
            _ => false,
        };
        if !acceptable {
            return None;
        }
        seen.push(name);
    }
    Some(agreement)
}

/// A window size parameter's value: 8 to 15, digits only (RFC 7692 §7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// `value` without surrounding double quotes (RFC 7692 §7.1.2 allows a quoted
/// string with the same content).
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Splits `text` at `separator` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut quoted = false;
        for (i, c) in current.char_indices() {
            if c == '"' {
                quoted = !quoted;
            } else if c == separator && !quoted {
                rest = Some(&current[i + 1..]);
                return Some(&current[..i]);
            }
        }
        rest = None;
        Some(current)
    })
}

thread_local! {
    /// One compressor per runtime thread, reset before each message: its
    /// state is a few hundred KiB, too much to allocate per event and far too
    /// much to keep per connection.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
}

/// `payload` as the payload of a compressed message (RSV1 set): raw deflate,
/// ended with a sync flush whose empty block's four bytes are removed (RFC
/// 7692 §7.2.1). Depends on `payload` alone (no context takeover).
pub fn deflate(payload: &[u8]) -> Bytes {
    COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        deflate_with(&mut compressor, payload)
    })
}

fn deflate_with(compressor: &mut Compress, payload: &[u8]) -> Bytes {
    // Room for an incompressible payload: stored blocks cost 5 bytes per 64 KiB.
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 16_384 * 5 + 64);
    let mut input = payload;
    loop {
        let consumed_before = compressor.total_in();
        // Compressing into a Vec only fails on a corrupt state, which a reset
        // compressor does not have; a failure ends the loop with what is there.
        if compressor
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .is_err()
        {
            break;
        }
        let consumed = (compressor.total_in() - consumed_before) as usize;
        input = &input[consumed.min(input.len())..];
        // Done when all input is in and the flush fit (space was left over).
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&SYNC_FLUSH_TAIL) {
        out.truncate(out.len() - SYNC_FLUSH_TAIL.len());
    }
    Bytes::from(out)
}

/// Why a compressed message from the client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// Inflated (or still compressed) it exceeds `connection.max_message_size`.
    #[error("inflated message exceeds max_message_size")]
    TooLarge,
    /// The deflate data is invalid.
    #[error("invalid deflate data")]
    Corrupt,
    /// The frames break RFC 7692 or RFC 6455 in a way only this layer sees.
    #[error("{0}")]
    Protocol(&'static str),
}

impl InflateError {
    fn to_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// The inflate error behind a read error of the socket, if that is what
    /// it is.
    pub fn of(err: &io::Error) -> Option<Self> {
        err.get_ref()?.downcast_ref::<Self>().copied()
    }
}

/// One compressed message being inflated: its opcode, the decompressor and
/// what it produced so far (bounded by `max_message_size`).
struct Inflation {
    opcode: u8,
    decompress: Decompress,
    output: Vec<u8>,
    compressed_len: usize,
    ended: bool,
}

impl Inflation {
    fn new(opcode: u8) -> Self {
        Self {
            opcode,
            decompress: Decompress::new(false),
            output: Vec::new(),
            compressed_len: 0,
            ended: false,
        }
    }

    /// Inflates `input`, failing as soon as the output passes `max`: a small
    /// compressed message can inflate to gigabytes.
    fn feed(&mut self, mut input: &[u8], max: usize) -> Result<(), InflateError> {
        if self.ended {
            return if input.is_empty() {
                Ok(())
            } else {
                Err(InflateError::Corrupt)
            };
        }
        loop {
            if self.output.len() == self.output.capacity() {
                let room = max.saturating_add(1).saturating_sub(self.output.len());
                if room == 0 {
                    return Err(InflateError::TooLarge);
                }
                self.output
                    .reserve_exact(room.min(self.output.len().max(4096)));
            }
            let (in_before, out_before) = (self.decompress.total_in(), self.output.len());
            let status = self
                .decompress
                .decompress_vec(input, &mut self.output, FlushDecompress::None)
                .map_err(|_| InflateError::Corrupt)?;
            let consumed = (self.decompress.total_in() - in_before) as usize;
            input = &input[consumed.min(input.len())..];
            if self.output.len() > max {
                return Err(InflateError::TooLarge);
            }
            if status == Status::StreamEnd {
                // A final block ends the message; nothing may follow it.
                self.ended = true;
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(InflateError::Corrupt)
                };
            }
            let room_left = self.output.len() < self.output.capacity();
            if input.is_empty() && room_left {
                return Ok(());
            }
            if consumed == 0 && self.output.len() == out_before && room_left {
                // No progress with input and room: the data cannot be inflated.
                return Err(InflateError::Corrupt);
            }
        }
    }

    /// The whole message as one plain frame for tungstenite: FIN, the
    /// message's opcode, masked (as client frames must be) with a zero mask,
    /// which leaves the payload as it is.
    fn finish(mut self, max: usize) -> Result<Vec<u8>, InflateError> {
        if !self.ended {
            self.feed(&SYNC_FLUSH_TAIL, max)?;
        }
        let payload = self.output;
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | self.opcode);
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(&payload);
        Ok(frame)
    }
}

/// Where the frame parser is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a frame header.
    Header,
    /// Inside a frame tungstenite reads as it is.
    PassThrough,
    /// Inside a compressed frame, whose payload goes to the decompressor.
    Compressed,
    /// A compressed message was refused; every read reports it.
    Failed(InflateError),
}

/// Bytes held between reads, only while a compressed message is under way or
/// its inflated frame is not yet handed over: boxed and dropped when empty, so
/// an idle connection holds a null pointer.
#[derive(Default)]
struct Backlog {
    /// The compressed message being inflated.
    message: Option<Inflation>,
    /// An inflated message's frame, to hand to tungstenite before anything else.
    ready: Vec<u8>,
    ready_from: usize,
    /// Raw bytes read after the end of a compressed message, to parse after
    /// its frame is handed over.
    unparsed: Vec<u8>,
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.ready_from >= self.ready.len() && self.unparsed.is_empty()
    }
}

/// The frame parser of a connection that negotiated permessage-deflate.
struct FrameReader {
    max_message_size: usize,
    phase: Phase,
    header: [u8; 14],
    header_len: u8,
    /// Whether the frame whose header is being read is compressed (decided by
    /// its first byte), and whether it is the last of its message.
    compressed_frame: bool,
    fin: bool,
    /// A compressed message started and has not had its last frame.
    in_compressed_message: bool,
    mask: [u8; 4],
    mask_offset: u8,
    remaining: u64,
    backlog: Option<Box<Backlog>>,
}

/// What parsing one chunk of raw bytes did.
struct Parsed {
    /// Bytes kept at the chunk's start for tungstenite.
    kept: usize,
    /// Bytes of the chunk parsed; the rest waits until a finished compressed
    /// message's frame is handed over.
    consumed: usize,
}

impl FrameReader {
    fn new(max_message_size: usize) -> Self {
        Self {
            max_message_size,
            phase: Phase::Header,
            header: [0; 14],
            header_len: 0,
            compressed_frame: false,
            fin: false,
            in_compressed_message: false,
            mask: [0; 4],
            mask_offset: 0,
            remaining: 0,
            backlog: None,
        }
    }

    fn backlog(&mut self) -> &mut Backlog {
        self.backlog.get_or_insert_with(Box::default)
    }

    /// The length of the header being read, once its first two bytes are in.
    fn header_size(&self) -> Option<usize> {
        if self.header_len < 2 {
            return None;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }

    /// Decides from a frame's first byte whether the frame is compressed.
    fn begin_frame(&mut self, first: u8) -> Result<(), InflateError> {
        let opcode = first & 0x0f;
        let rsv1 = first & 0x40 != 0;
        let data_opcode = opcode == 1 || opcode == 2;
        if self.in_compressed_message && data_opcode {
            return Err(InflateError::Protocol(
                "a new message started inside a fragmented one",
            ));
        }
        self.compressed_frame = if opcode == 0 {
            if self.in_compressed_message && rsv1 {
                return Err(InflateError::Protocol("RSV1 set on a continuation frame"));
            }
            self.in_compressed_message
        } else {
            // Control frames (and reserved opcodes) with RSV1 pass through:
            // tungstenite fails them with 1002.
            data_opcode && rsv1
        };
        if self.compressed_frame && first & 0x30 != 0 {
            return Err(InflateError::Protocol("RSV2 or RSV3 set"));
        }
        self.fin = first & 0x80 != 0;
        Ok(())
    }

    /// The header is complete: reads its length and mask and, for a
    /// compressed frame, starts or continues the message.
    fn end_header(&mut self, size: usize) -> Result<(), InflateError> {
        let header = &self.header[..size];
        let masked = header[1] & 0x80 != 0;
        let (length, mask_at) = match header[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
            127 => {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(&header[2..10]);
                (u64::from_be_bytes(bytes), 10)
            }
            len => (u64::from(len), 2),
        };
        if masked {
            self.mask.copy_from_slice(&header[mask_at..mask_at + 4]);
        }
        self.header_len = 0;
        self.remaining = length;
        self.mask_offset = 0;
        if !self.compressed_frame {
            self.phase = Phase::PassThrough;
            return Ok(());
        }
        if !masked {
            return Err(InflateError::Protocol("unmasked client frame"));
        }
        let opcode = header[0] & 0x0f;
        let max = self.max_message_size;
        let backlog = self.backlog();
        let message = backlog
            .message
            .get_or_insert_with(|| Inflation::new(opcode));
        message.compressed_len = message
            .compressed_len
            .saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
        if message.compressed_len > max {
            return Err(InflateError::TooLarge);
        }
        self.in_compressed_message = true;
        self.phase = Phase::Compressed;
        Ok(())
    }

    /// Parses `chunk` in place: frames tungstenite reads as they are move to
    /// the front, compressed frames go to the decompressor. Stops after the
    /// last frame of a compressed message, whose inflated frame then waits in
    /// the backlog.
    fn parse(&mut self, chunk: &mut [u8]) -> Result<Parsed, InflateError> {
        let mut read = 0;
        let mut kept = 0;
        while read < chunk.len() {
            match self.phase {
                Phase::Failed(err) => return Err(err),
                Phase::Header => {
                    let byte = chunk[read];
                    read += 1;
                    if self.header_len == 0 {
                        self.begin_frame(byte)?;
                    }
                    self.header[usize::from(self.header_len)] = byte;
                    self.header_len += 1;
                    if !self.compressed_frame {
                        chunk[kept] = byte;
                        kept += 1;
                    }
                    match self.header_size() {
                        Some(size) if size == usize::from(self.header_len) => {
                            self.end_header(size)?;
                        }
                        _ => continue,
                    }
                }
                Phase::PassThrough => {
                    let n = self.take(chunk.len() - read);
                    chunk.copy_within(read..read + n, kept);
                    kept += n;
                    read += n;
                }
                Phase::Compressed => {
                    let n = self.take(chunk.len() - read);
                    let payload = &mut chunk[read..read + n];
                    for byte in payload.iter_mut() {
                        *byte ^= self.mask[usize::from(self.mask_offset)];
                        self.mask_offset = (self.mask_offset + 1) & 3;
                    }
                    read += n;
                    let max = self.max_message_size;
                    if let Some(message) = self.backlog().message.as_mut() {
                        message.feed(payload, max)?;
                    }
                }
            }
            if self.phase != Phase::Header && self.remaining == 0 {
                let compressed = self.phase == Phase::Compressed;
                self.phase = Phase::Header;
                if compressed && self.fin {
                    self.in_compressed_message = false;
                    let max = self.max_message_size;
                    let backlog = self.backlog();
                    if let Some(message) = backlog.message.take() {
                        backlog.ready = message.finish(max)?;
                        backlog.ready_from = 0;
                    }
                    return Ok(Parsed {
                        kept,
                        consumed: read,
                    });
                }
            }
        }
        Ok(Parsed {
            kept,
            consumed: read,
        })
    }

    /// The part of the current frame's payload in the next `available` bytes.
    fn take(&mut self, available: usize) -> usize {
        let n = usize::try_from(self.remaining).map_or(available, |r| r.min(available));
        self.remaining -= n as u64;
        n
    }

    fn drop_backlog_if_empty(&mut self) {
        if self.backlog.as_ref().is_some_and(|b| b.is_empty()) {
            self.backlog = None;
        }
    }
}

/// The socket under tungstenite on a connection that may send compressed
/// messages: it hands tungstenite every frame as it came, except compressed
/// messages, which it inflates and hands over as one plain frame. Writes pass
/// through (the server writes compressed frames itself, see [`deflate`]).
///
/// Refusals surface as read errors carrying an [`InflateError`]: a message
/// that inflates past `max_message_size` (closed with 4501, as an oversized
/// plain message is), invalid deflate data or misplaced RSV1 bits (1002).
pub struct InflatingIo<S> {
    inner: S,
    /// `None` when the connection did not negotiate the extension: every byte
    /// passes through and tungstenite refuses RSV1 itself.
    reader: Option<Box<FrameReader>>,
}

impl<S> InflatingIo<S> {
    /// Wraps `inner`; `max_message_size` when the connection negotiated
    /// permessage-deflate, `None` to pass everything through.
    pub fn new(inner: S, max_message_size: Option<usize>) -> Self {
        Self {
            inner,
            reader: max_message_size.map(|max| Box::new(FrameReader::new(max))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for InflatingIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(reader) = this.reader.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if let Phase::Failed(err) = reader.phase {
                return Poll::Ready(Err(err.to_io()));
            }
            let start = buf.filled().len();
            // An inflated message first, then bytes read after it, then the socket.
            if let Some(backlog) = reader.backlog.as_mut() {
                if backlog.ready_from < backlog.ready.len() {
                    let n = buf
                        .remaining()
                        .min(backlog.ready.len() - backlog.ready_from);
                    buf.put_slice(&backlog.ready[backlog.ready_from..backlog.ready_from + n]);
                    backlog.ready_from += n;
                    if backlog.ready_from == backlog.ready.len() {
                        backlog.ready = Vec::new();
                        backlog.ready_from = 0;
                    }
                    reader.drop_backlog_if_empty();
                    return Poll::Ready(Ok(()));
                }
            }
            let from_backlog = reader
                .backlog
                .as_ref()
                .is_some_and(|b| !b.unparsed.is_empty());
            if from_backlog {
                if let Some(backlog) = reader.backlog.as_mut() {
                    let n = buf.remaining().min(backlog.unparsed.len());
                    buf.put_slice(&backlog.unparsed[..n]);
                    backlog.unparsed.drain(..n);
                }
            } else {
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if buf.filled().len() == start {
                    // The end of the stream.
                    return Poll::Ready(Ok(()));
                }
            }
            let end = buf.filled().len();
            let chunk = &mut buf.filled_mut()[start..end];
            match reader.parse(chunk) {
                Ok(parsed) => {
                    if parsed.consumed < chunk.len() {
                        let rest = chunk[parsed.consumed..].to_vec();
                        let backlog = reader.backlog();
                        let later = std::mem::replace(&mut backlog.unparsed, rest);
                        backlog.unparsed.extend_from_slice(&later);
                    }
                    buf.set_filled(start + parsed.kept);
                    reader.drop_backlog_if_empty();
                    if parsed.kept > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(err) => {
                    // Whatever came before the refused frame is still handed
                    // over; the next read reports the refusal.
                    reader.phase = Phase::Failed(err);
                    reader.backlog = None;
                    buf.set_filled(start);
                    return Poll::Ready(Err(err.to_io()));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for InflatingIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn offers(values: &[&str]) -> bool {
        negotiate(values.iter().map(|v| v.as_bytes())).is_some()
    }

    #[test]
    fn offers_are_accepted_or_declined() {
        let agreement = |offer: &str| negotiate([offer.as_bytes()]).unwrap();
        assert_eq!(
            agreement("permessage-deflate").response(),
            ACCEPTED_RESPONSE
        );
        assert!(agreement("permessage-deflate").compresses_outgoing());
        // A smaller server window is promised and kept by sending plain frames.
        let small = agreement("permessage-deflate; server_max_window_bits=10");
        assert_eq!(
            small.response(),
            format!("{ACCEPTED_RESPONSE}; server_max_window_bits=10")
        );
        assert!(!small.compresses_outgoing());
        assert!(agreement("permessage-deflate; server_max_window_bits=15").compresses_outgoing());
        assert!(offers(&["permessage-deflate"]));
        assert!(offers(&["permessage-deflate; client_max_window_bits"]));
        assert!(offers(&[
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
        ]));
        assert!(offers(&[
            "permessage-deflate; server_max_window_bits=\"15\""
        ]));
        assert!(offers(&["x-webkit-deflate-frame", "Permessage-Deflate"]));
        // A malformed offer, then a fallback offer.
        assert!(offers(&[
            "permessage-deflate; server_max_window_bits=7, permessage-deflate"
        ]));
        assert!(!offers(&["permessage-deflate; server_max_window_bits=7"]));
        assert!(!offers(&["permessage-deflate; client_max_window_bits=16"]));
        assert!(!offers(&["permessage-deflate; client_max_window_bits=08x"]));
        assert!(!offers(&["permessage-deflate; server_max_window_bits"]));
        assert!(!offers(&["permessage-deflate; foo"]));
        assert!(!offers(&[
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
        ]));
        assert!(!offers(&[
            "permessage-deflate; client_no_context_takeover=1"
        ]));
        assert!(!offers(&["deflate-frame", ""]));
        assert!(!offers(&[]));
    }

    fn inflate_payload(payload: &[u8]) -> Vec<u8> {
        let mut message = Inflation::new(1);
        message.feed(payload, 1 << 20).unwrap();
        let frame = message.finish(1 << 20).unwrap();
        let header = match frame[1] & 0x7f {
            126 => 8,
            127 => 14,
            _ => 6,
        };
        frame[header..].to_vec()
    }

    #[test]
    fn deflate_round_trips_without_the_sync_flush_tail() {
        for payload in [
            &b""[..],
            b"Hello",
            &br#"{"type":"event","data":{"a":1}}"#.repeat(200),
            &(0..200_000u32)
                .map(|i| (i * 7919 % 251) as u8)
                .collect::<Vec<_>>(),
        ] {
            let deflated = deflate(payload);
            assert!(!deflated.ends_with(&SYNC_FLUSH_TAIL));
            assert_eq!(inflate_payload(&deflated), payload);
            // Without context takeover the output depends on the payload only.
            assert_eq!(deflate(payload), deflated);
        }
        // RFC 7692 §7.2.3.1's example.
        assert_eq!(
            &deflate(b"Hello")[..],
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
        );
    }

    #[test]
    fn no_bound_is_too_large_to_inflate_under() {
        // An embedder's unvalidated `max_message_size = usize::MAX` overflowed
        // the bound plus one: a panic (debug) or every message refused.
        let payload = br#"{"type":"publish","data":{"a":1}}"#.repeat(100);
        let mut message = Inflation::new(1);
        message.feed(&deflate(&payload), usize::MAX).unwrap();
        assert!(message.finish(usize::MAX).is_ok());
    }

    /// A masked client frame with `first` as its first byte.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// What tungstenite would read from `input` through the adapter, read
    /// `chunk` bytes at a time.
    async fn through_adapter(input: Vec<u8>, chunk: usize) -> io::Result<Vec<u8>> {
        let mut io = InflatingIo::new(&input[..], Some(1000));
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = io.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn plain_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut message = Inflation::new(opcode);
        message.output = payload.to_vec();
        message.ended = true;
        message.finish(usize::MAX).unwrap()
    }

    #[tokio::test]
    async fn compressed_messages_become_plain_frames_in_order() {
        let text = br#"{"type":"publish","data":"abcabcabcabcabcabc"}"#;
        let deflated = deflate(text);
        let (first, second) = deflated.split_at(deflated.len() / 2);
        let ping = client_frame(0x89, b"p");
        let mut input = client_frame(0x81 | 0x40, &deflated);
        input.extend_from_slice(&ping);
        // Fragmented: RSV1 on the first frame only, a ping in between.
        input.extend_from_slice(&client_frame(0x01 | 0x40, first));
        input.extend_from_slice(&ping);
        input.extend_from_slice(&client_frame(0x80, second));
        let plain = client_frame(0x81, b"plain");
        input.extend_from_slice(&plain);
        let mut expected = plain_frame(1, text);
        expected.extend_from_slice(&ping);
        expected.extend_from_slice(&ping);
        expected.extend_from_slice(&plain_frame(1, text));
        expected.extend_from_slice(&plain);
        for chunk in [1, 3, 7, 64, 4096] {
            assert_eq!(
                through_adapter(input.clone(), chunk).await.unwrap(),
                expected,
                "chunk {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn bombs_garbage_and_misplaced_rsv1_are_refused() {
        let bomb = deflate(&vec![b'a'; 5000]);
        let err = through_adapter(client_frame(0xc1, &bomb), 16)
            .await
            .unwrap_err();
        assert_eq!(InflateError::of(&err), Some(InflateError::TooLarge));
        let err = through_adapter(client_frame(0xc1, &[0xff; 20]), 16)
            .await
            .unwrap_err();
        assert_eq!(InflateError::of(&err), Some(InflateError::Corrupt));
        let mut input = client_frame(0x41, &deflate(b"abc"));
        input.extend_from_slice(&client_frame(0xc0, b""));
        let err = through_adapter(input, 16).await.unwrap_err();
        assert!(matches!(
            InflateError::of(&err),
            Some(InflateError::Protocol(_))
        ));
        // RSV1 on a control frame is tungstenite's to refuse.
        let ping = client_frame(0xc9, b"");
        assert_eq!(through_adapter(ping.clone(), 16).await.unwrap(), ping);
    }
}
