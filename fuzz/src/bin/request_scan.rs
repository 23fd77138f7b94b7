//! Fuzz target: `switchyard_worker::fuzzing::request_scan` (see there for what it checks).
fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_worker::fuzzing::request_scan(data));
}
