//! What herald sends out: every call to a URL a customer chose goes
//! through the [`guard`]ed client; the [`callbacks`] sender reports
//! statuses to `status_url`s; [`webhook`] makes flows' webhook calls;
//! [`email`] sends their emails.

pub mod callbacks;
pub mod email;
pub mod guard;
pub mod webhook;
