//! See benches/connect.rs.
