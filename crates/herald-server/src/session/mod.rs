//! The workers that run sessions: the [`dispatcher`] takes due jobs off the
//! queue and hands each to the [`driver`], which runs one wake of the
//! session.

pub mod dispatcher;
pub mod driver;
