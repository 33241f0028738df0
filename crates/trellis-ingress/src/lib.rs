//! The L7 HTTP(S) entry (`trellis ingress`): Ingress and HTTPRoute objects become one
//! immutable routing table (a pure function, [`table`]), swapped in whole on every change;
//! a hyper reverse proxy ([`proxy`]) serves it over HTTP/1.1, HTTP/2 and TLS with SNI, and
//! sends requests straight to the ready pod endpoints of the Services.

pub mod controller;
pub mod handover;
pub mod health;
pub mod proxy;
pub mod ratelimit;
pub mod serve;
pub mod table;
pub mod tls;
