use crate::{PixelFormat, Rect, VncError, VncEvent};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncReadExt};

pub struct Decoder {}

impl Decoder {
    pub fn new() -> Self {
        Self {}
    }

    pub async fn decode<S, F, Fut>(
        &mut self,
        format: &PixelFormat,
        rect: &Rect,
        input: &mut S,
        output_func: &F,
    ) -> Result<(), VncError>
    where
        S: AsyncRead + Unpin,
        F: Fn(VncEvent) -> Fut,
        Fut: Future<Output = Result<(), VncError>>,
    {
        crate::limits::dimensions(rect.width, rect.height)?;
        format.validate()?;
        // +----------------------------+--------------+-------------+
        // | No. of bytes               | Type [Value] | Description |
        // +----------------------------+--------------+-------------+
        // | width*height*bytesPerPixel | PIXEL array  | pixels      |
        // +----------------------------+--------------+-------------+
        let bpp = format.bits_per_pixel / 8;
        let buffer_size = bpp as usize * rect.height as usize * rect.width as usize;
        // Read into the vector's spare capacity: no zeroing of a buffer that is about to be
        // overwritten, and with a buffered reader the bulk goes from the socket straight here.
        let mut pixels = Vec::with_capacity(buffer_size);
        while pixels.len() < buffer_size {
            let remaining = (buffer_size - pixels.len()) as u64;
            if (&mut *input).take(remaining).read_buf(&mut pixels).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
        output_func(VncEvent::RawImage(*rect, pixels)).await?;
        Ok(())
    }
}
