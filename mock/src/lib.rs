//! switchyard-mock: a scriptable mock LLM upstream speaking the OpenAI and Anthropic wire
//! formats (streaming included), with fault injection and a small HTTP control plane.
//!
//! Used in-process by integration tests and `switchyard up --demo`, and as a process
//! (`switchyard-mock`) by cluster tests and the benchmark.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use switchyard_mock::{Behavior, MockOptions, MockServer};
//! let mock = MockServer::start(MockOptions::default()).await?;
//! mock.push(Behavior::rate_limited(2)); // the next request gets a 429
//! println!("{}", mock.openai_base());
//! # Ok(()) }
//! ```
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
//! `GET /v1/models`, `POST /v1/messages`, `POST /v1/messages/count_tokens`, any other
//! `POST /v1/*` (echo). Control plane: `POST /_mock/default`, `POST /_mock/push`,
//! `POST /_mock/reset`, `GET /_mock/stats`, `GET /_mock/requests`.

pub mod behavior;
pub mod cli;
mod server;
pub mod wire;

pub use behavior::{Behavior, Fault, JsonStyle, Usage, DEFAULT_REPLY};
pub use server::{
    MockBody, MockOptions, MockServer, MockTls, SeenRequest, SeenRequestJson, Stats, REQUEST_LOG_CAPACITY,
};
