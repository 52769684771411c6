//! The handler registry: command id → handlers, run in registration order.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, RwLock},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;

use crate::{error::HandlerError, node::NodeId};

/// What a handler knows about the message it handles.
#[derive(Clone, Debug)]
pub struct MeshContext {
    /// The node that sent the message.
    pub from: NodeId,
    /// The command id.
    pub command: u32,
}

pub(crate) type HandlerFn = Arc<
    dyn Fn(MeshContext, Bytes) -> BoxFuture<'static, Result<Bytes, HandlerError>> + Send + Sync,
>;

/// Why dispatching a message produced no reply payload.
#[derive(Debug)]
pub(crate) enum DispatchError {
    NoHandler,
    Handler(HandlerError),
}

#[derive(Default)]
pub(crate) struct Handlers {
    by_command: RwLock<HashMap<u32, Arc<[HandlerFn]>>>,
}

impl Handlers {
    pub(crate) fn add(&self, command: u32, handler: HandlerFn) {
        let mut map = self
            .by_command
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list: Vec<HandlerFn> = map.get(&command).map(|l| l.to_vec()).unwrap_or_default();
        list.push(handler);
        map.insert(command, list.into());
    }

    pub(crate) fn has(&self, command: u32) -> bool {
        self.read().contains_key(&command)
    }

    /// Runs every handler of the command in order. The first error stops the chain; otherwise
    /// the reply is the last handler's.
    pub(crate) async fn dispatch(
        &self,
        ctx: MeshContext,
        payload: Bytes,
    ) -> Result<Bytes, DispatchError> {
        let Some(list) = self.read().get(&ctx.command).cloned() else {
            return Err(DispatchError::NoHandler);
        };
        let mut reply = Bytes::new();
        for handler in list.iter() {
            reply = handler(ctx.clone(), payload.clone())
                .await
                .map_err(DispatchError::Handler)?;
        }
        Ok(reply)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u32, Arc<[HandlerFn]>>> {
        self.by_command
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Wraps a bytes handler.
pub(crate) fn bytes_handler<F, Fut>(f: F) -> HandlerFn
where
    F: Fn(MeshContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    Arc::new(move |ctx, payload| Box::pin(f(ctx, payload)))
}

/// Wraps a typed handler: decodes the request (a bad payload is answered with
/// [`HandlerError::BAD_PAYLOAD`]) and encodes the response.
pub(crate) fn message_handler<Req, Resp, F, Fut>(f: F) -> HandlerFn
where
    Req: Message + Default + 'static,
    Resp: Message + 'static,
    F: Fn(MeshContext, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, HandlerError>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |ctx, payload| {
        let f = f.clone();
        Box::pin(async move {
            let request = Req::decode(payload).map_err(|e| {
                HandlerError::new(
                    HandlerError::BAD_PAYLOAD,
                    format!("cannot decode {}: {e}", std::any::type_name::<Req>()),
                )
            })?;
            Ok(Bytes::from(f(ctx, request).await?.encode_to_vec()))
        })
    })
}
