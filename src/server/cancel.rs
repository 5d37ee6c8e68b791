//! CancelRequest, for the whole life of a statement. pgwire cancels a statement only while its handler runs; kfsql's
//! handlers return a stream of rows that is read after that, so a statement whose rows are streaming (a long scan, a
//! big join) would ignore the request. Each statement that streams rows gets a token, found by the connection's
//! (pid, secret key); a CancelRequest fires it, and the rows end with SQLSTATE 57014 ("canceling statement due to
//! user request") while dropping the stream stops the query and its Kafka readers.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use pgwire::api::ClientInfo;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::messages::cancel::CancelRequest;
use tokio_util::sync::CancellationToken;

/// pgwire's cancel handler, plus the tokens of statements that are streaming rows.
pub struct Cancel {
    inner: DefaultCancelHandler,
    /// The token of each connection's latest statement, by (pid, secret key).
    running: Mutex<HashMap<(i32, Vec<u8>), CancellationToken>>,
}

impl Cancel {
    pub fn new(inner: DefaultCancelHandler) -> Self {
        Self { inner, running: Mutex::new(HashMap::new()) }
    }

    /// A token for the statement this connection is about to run (the previous one's is done).
    pub fn statement<C: ClientInfo>(&self, client: &C) -> CancellationToken {
        let (pid, key) = client.pid_and_secret_key();
        let token = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            // a statement's token is cancelled when its rows are dropped (see `rows_response`), so finished ones
            // (of connections gone too) are pruned here
            if running.len() > 64 {
                running.retain(|_, t| !t.is_cancelled());
            }
            running.insert((pid, key.to_bytes().to_vec()), token.clone());
        }
        token
    }
}

#[async_trait]
impl CancelHandler for Cancel {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes().to_vec());
        if let Ok(running) = self.running.lock()
            && let Some(token) = running.get(&key)
        {
            token.cancel();
        }
        self.inner.on_cancel_request(request).await;
    }
}
