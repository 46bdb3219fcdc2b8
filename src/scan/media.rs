//! The media-part detector: which top-level `messages[].content[]` (or `input[]...`) part
//! has a `type` that carries an image, audio, video or file. Hooked on keys, values and
//! closing brackets, never on the bytes inside strings.

/// Longest key or `type` value the media probe keeps; longer ones match nothing.
const PROBE_BYTES: usize = 16;

/// Top-level keys whose arrays hold messages with content parts (Chat Completions, Responses).
const MESSAGE_LISTS: &[&[u8]] = &[b"messages", b"input"];

/// `type` values of content parts that carry an image, audio, video or file (OpenAI Chat
/// Completions and Responses, vLLM's `video_url`/`audio_url`, Anthropic's `image`/`document`).
pub const MEDIA_PART_TYPES: &[&str] = &[
    "image_url",
    "input_image",
    "image",
    "input_audio",
    "audio_url",
    "video_url",
    "file",
    "input_file",
    "document",
];

/// Opt-in detection of media content parts (`messages[].content[].type`, also under the
/// top-level `input`), found in the same pass. Off (`ModelScanner<false>`), it costs nothing.
#[derive(Debug, Default)]
pub(super) struct Media {
    pub(super) found: bool,
    /// How much of the path the open containers match: 1 = the messages array is open (at
    /// depth 2), 2 = a message object (depth 3), 3 = its content array (depth 4), 4 = a part
    /// object (depth 5). Level L is always the container at depth L + 1 or below.
    pub(super) level: u32,
    /// The key just read continues the path: the value decides.
    pub(super) next: bool,
    /// The current string is captured into `probe`.
    pub(super) capturing: bool,
    /// The captured string is a part's `type` value.
    pub(super) type_value: bool,
    pub(super) probe: [u8; PROBE_BYTES],
    /// Bytes in `probe`; more than `PROBE_BYTES` means too long to match.
    pub(super) probe_len: usize,
}

impl Media {
    pub(super) fn capture(&mut self, bytes: &[u8]) {
        let end = self.probe_len + bytes.len();
        if let Some(dst) = self.probe.get_mut(self.probe_len..end) {
            dst.copy_from_slice(bytes);
        }
        self.probe_len = end;
    }

    pub(super) fn probed(&self) -> &[u8] {
        self.probe.get(..self.probe_len).unwrap_or(&[])
    }

    /// A key at `depth` was opened: capture it when it could continue the path.
    pub(super) fn begin_key(&mut self, depth: u32) {
        self.next = false;
        self.capturing = depth == self.level + 1 && matches!(depth, 1 | 3 | 5);
        self.probe_len = 0;
    }

    /// A key ended: does it continue the path?
    pub(super) fn end_key(&mut self, depth: u32) {
        if self.capturing {
            let key = self.probed();
            self.next = match depth {
                1 => MESSAGE_LISTS.contains(&key),
                3 => key == b"content",
                _ => key == b"type",
            };
            self.capturing = false;
        }
    }

    /// A value starting with `b` begins in the container at `depth`. Returns true when it is
    /// a part's `type` string, to be captured.
    pub(super) fn begin_value(&mut self, b: u8, depth: u32) -> bool {
        let after_key = std::mem::take(&mut self.next);
        let on_path = depth == self.level + 1;
        match (b, self.level) {
            (b'[', 0 | 2) if after_key => self.level += 1,
            (b'{', 1 | 3) if on_path => self.level += 1,
            (b'"', 4) if after_key => {
                self.capturing = true;
                self.type_value = true;
                self.probe_len = 0;
                return true;
            }
            _ => {}
        }
        false
    }

    pub(super) fn end_value(&mut self) {
        if self.type_value {
            let t = self.probed();
            self.found |= MEDIA_PART_TYPES.iter().any(|m| m.as_bytes() == t);
            self.type_value = false;
            self.capturing = false;
        }
    }
}
