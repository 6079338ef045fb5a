//! The hash maps of the server's indexes (clients, users, rooms) and of the dispatcher's
//! calls in flight.
//!
//! std's default hasher, SipHash-1-3, was a visible share of a connection's cost (`perf`: the
//! hub hashes a 36-character id several times per connection, and the dispatcher a token per
//! message). foldhash is several times faster on short keys and still seeded at random per
//! process, so peers cannot choose keys that collide (room names come from clients, though
//! only those that `validateRoomFn` accepts are stored).

pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
