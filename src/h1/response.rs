use super::{HeadError, Method, Parse, ResponseHead};
pub fn parse_response(_buf: &[u8], _m: Method) -> Result<Parse<ResponseHead>, HeadError> {
    Ok(Parse::Partial)
}
