//! A JSON-RPC message POSTed by a client: read whole (it is at most `maxFrameBytes`),
//! looked into only for its kind and `id`, and counted against the caller's rate
//! limits like an `rpc` frame on the WebSocket. Its bytes go upstream as they came.

use axum::body::Body;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::error::{Refused, RouteError};
use crate::auth::Caller;
use crate::jsonrpc::{Head, Kind};

/// A POSTed message.
#[derive(Debug)]
pub struct Message {
    /// The body, carried as is.
    pub body: Bytes,
    /// The request's id, when the message is a request (for error answers).
    pub id: Option<Box<RawValue>>,
}

impl Message {
    /// Reads a body of at most `limit` bytes that holds one JSON-RPC message.
    pub async fn read(body: Body, limit: usize) -> Result<Self, Refused> {
        let body = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| RouteError::TooLarge(limit))?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| RouteError::NotJsonRpc("it is not UTF-8".into()))?;
        if text.trim_start().starts_with('[') {
            return Err(RouteError::Batch.into());
        }
        let head = Head::parse(text).map_err(|e| RouteError::NotJsonRpc(e.to_string()))?;
        let id = match head.kind() {
            Kind::Request => head.id.map(RawValue::to_owned),
            Kind::Notification | Kind::Response => None,
            Kind::Invalid => {
                let why = "it needs a `method` or an `id`";
                return Err(RouteError::NotJsonRpc(why.into()).into());
            }
        };
        Ok(Self { body, id })
    }

    /// Takes a token from the caller's buckets for a message to `server`, as for an `rpc`
    /// frame: whatever server it names, the key's bucket first, then that server's.
    pub async fn check_rate(&self, caller: &Caller, server: &str) -> Result<(), Refused> {
        let Caller::Key(key) = caller else {
            return Ok(());
        };
        key.check_rate(server).await.map_err(|over| {
            RouteError::RateLimited {
                message: over.message(&key.name),
                retry_after_ms: over.retry_after_ms,
            }
            .about(Some(server), self.id.as_deref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(text: &'static str) -> Result<Message, Refused> {
        Message::read(Body::from(text), 64).await
    }

    #[tokio::test]
    async fn requests_keep_their_id_and_the_rest_have_none() {
        let request = read(r#"{"jsonrpc":"2.0","id":"a-1","method":"ping"}"#)
            .await
            .unwrap();
        assert_eq!(request.id.unwrap().get(), r#""a-1""#);
        let note = read(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await
            .unwrap();
        assert!(note.id.is_none());
        let response = read(r#"{"jsonrpc":"2.0","id":4,"result":{}}"#)
            .await
            .unwrap();
        assert!(response.id.is_none());
    }

    #[tokio::test]
    async fn what_is_not_one_message_is_refused() {
        let code = |r: Result<Message, Refused>| r.unwrap_err().error.code().as_str();
        assert_eq!(
            code(read(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).await),
            "batch"
        );
        assert_eq!(code(read("not json").await), "bad_frame");
        assert_eq!(code(read(r#"{"jsonrpc":"2.0"}"#).await), "bad_frame");
        let big = read(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"................................"}}"#).await;
        assert!(matches!(big.unwrap_err().error, RouteError::TooLarge(64)));
    }
}
