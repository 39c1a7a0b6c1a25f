//! Everything that opens or closes circuits from outside the hot path:
//! Meta's webhooks, Health Status polls, and expiry timers.

pub mod webhook;
