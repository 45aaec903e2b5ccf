//! In-process multi-node tests on loopback TCP (port 0). Every wait is on
//! an event with a generous bound, never a sleep.

mod support;

mod block;
mod converge;
mod discovery;
mod gossip;
mod providers;
mod restart;
mod sync;
