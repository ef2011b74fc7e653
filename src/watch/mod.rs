//! etcd's watches: the hub that takes each applied batch's events off the write path, and the streams
//! that match them to watchers and catch slow or late watchers up from the MVCC history.
//!
//! Like etcd's `watchable_store`: synced watchers get events as they are applied; unsynced ones (an old
//! start revision, or a stream that fell behind) read history until they reach the present; nobody is
//! ever dropped for being slow, and memory is bounded by per-stream queues, not by the slowest reader.

pub mod encoded;
pub mod hub;
pub mod stream;

pub use encoded::{size_batch, EncodedWatchResponse, WatchCodec};
pub use hub::Hub;
pub use stream::{History, Options, Permit, Stamp, WatchStream};
