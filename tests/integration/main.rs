//! integration tests

mod sim;
