//! Fuzz target: `switchyard_worker::fuzzing::traceparent` (see there for what it checks).
fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_worker::fuzzing::traceparent(data));
}
