//! herald's black-box test suite: the real server on port 0, a temporary
//! SQLite file, a local callback receiver, and HTTP. Each module covers
//! sections of CONTRACT.md, named in its doc comment.

mod helpers;

mod agents;
mod callbacks;
mod conventions;
mod durability;
mod idempotency;
mod make_call;
mod messaging;
mod operator;
mod rate_limits;
mod sessions;
