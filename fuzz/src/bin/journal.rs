//! Fuzz target: `switchyard_worker::fuzzing::journal` (see there for what it checks).
fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_worker::fuzzing::journal(data));
}
