//! The `flowlog.ingest.v1.Ingest` service as tonic serves it, with a codec that keeps each
//! `PushRequest`'s bytes next to the decoded message: the WAL stores the message as
//! received, so the ingest path never serializes a batch again.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use flowlog_transport::pb::ingest_server::SERVICE_NAME;
use flowlog_transport::pb::{PushReply, PushRequest};
use prost::Message;
use tonic::body::Body;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::http::{self, Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Status};

use super::service::{IngestService, RawPush};

/// Path of the one method.
pub const PUSH_PATH: &str = "/flowlog.ingest.v1.Ingest/Push";

/// Decodes [`RawPush`]es, encodes [`PushReply`]s.
#[derive(Debug, Clone, Copy)]
pub struct PushCodec {
    /// Most records a push may hold (`listen.max_batch_records`).
    pub max_records: usize,
}

/// Encoder of [`PushCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplyEncoder;

/// Decoder of [`PushCodec`].
#[derive(Debug, Clone, Copy)]
pub struct PushDecoder {
    max_records: usize,
}

impl Encoder for ReplyEncoder {
    type Item = PushReply;
    type Error = Status;

    fn encode(&mut self, item: PushReply, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))
    }
}

impl Decoder for PushDecoder {
    type Item = RawPush;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<RawPush>, Status> {
        // Splits the message off tonic's buffer without copying it.
        let bytes = buf.copy_to_bytes(buf.remaining());
        // Counted on the wire first: an empty record is 2 bytes there and hundreds decoded.
        let records = flowlog_transport::count_push_records(&bytes).map_err(|e| {
            Status::invalid_argument(format!("the message is not a valid PushRequest: {e}"))
        })?;
        if records > self.max_records {
            return Err(Status::invalid_argument(format!(
                "the batch holds {records} records; listen.max_batch_records allows at most {}",
                self.max_records
            )));
        }
        let request = PushRequest::decode(bytes.clone()).map_err(|e| {
            Status::invalid_argument(format!("the message is not a valid PushRequest: {e}"))
        })?;
        Ok(Some(RawPush { bytes, request }))
    }
}

impl Codec for PushCodec {
    type Encode = PushReply;
    type Decode = RawPush;
    type Encoder = ReplyEncoder;
    type Decoder = PushDecoder;

    fn encoder(&mut self) -> ReplyEncoder {
        ReplyEncoder
    }

    fn decoder(&mut self) -> PushDecoder {
        PushDecoder {
            max_records: self.max_records,
        }
    }
}

/// The `Ingest` service: routes `Push` to [`IngestService`], answers UNIMPLEMENTED to
/// anything else. Accepts zstd and gzip requests and compresses replies when asked.
#[derive(Debug, Clone)]
pub struct IngestRoute {
    inner: Arc<IngestService>,
    max_message_bytes: usize,
    max_records: usize,
    compression: EnabledCompressionEncodings,
}

impl IngestRoute {
    /// Serves `inner`, refusing messages larger than `max_message_bytes` once decompressed
    /// and pushes of more than `max_records` records (before decoding them).
    pub fn new(inner: IngestService, max_message_bytes: usize, max_records: usize) -> IngestRoute {
        let mut compression = EnabledCompressionEncodings::default();
        compression.enable(CompressionEncoding::Zstd);
        compression.enable(CompressionEncoding::Gzip);
        IngestRoute {
            inner: Arc::new(inner),
            max_message_bytes,
            max_records,
            compression,
        }
    }
}

impl NamedService for IngestRoute {
    const NAME: &'static str = SERVICE_NAME;
}

/// The unary method handed to tonic.
struct PushMethod(Arc<IngestService>);

impl UnaryService<RawPush> for PushMethod {
    type Response = PushReply;
    type Future = BoxFuture<tonic::Response<PushReply>, Status>;

    fn call(&mut self, request: tonic::Request<RawPush>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.push(request).await })
    }
}

impl Service<Request<Body>> for IngestRoute {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.uri().path() != PUSH_PATH {
            return Box::pin(async move {
                let mut response = Status::new(Code::Unimplemented, "").into_http::<Body>();
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let method = PushMethod(Arc::clone(&self.inner));
        let compression = self.compression;
        let max = self.max_message_bytes;
        let codec = PushCodec {
            max_records: self.max_records,
        };
        Box::pin(async move {
            let mut grpc = Grpc::new(codec)
                .apply_compression_config(compression, compression)
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}
