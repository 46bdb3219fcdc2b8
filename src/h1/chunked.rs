use super::{ChunkedError, RequestFraming, ResponseFraming};
#[derive(Debug, Clone)]
pub enum BodyTracker {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}
impl BodyTracker {
    pub fn for_request(_framing: RequestFraming) -> BodyTracker {
        BodyTracker::Done
    }
    pub fn for_response(_framing: ResponseFraming) -> BodyTracker {
        BodyTracker::Done
    }
    pub fn feed(
        &mut self,
        input: &[u8],
        _on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, ChunkedError> {
        Ok(input.len())
    }
    pub fn is_done(&self) -> bool {
        matches!(self, BodyTracker::Done)
    }
}
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {}
