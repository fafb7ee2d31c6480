//! Benchmarks only: see benches/token.rs.
