//! stub
pub mod balance;
