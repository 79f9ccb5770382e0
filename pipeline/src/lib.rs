//! erpstream's runtime, stream processors, local schema registry and the `erpstream`
//! command. The binary (`main.rs`) only parses arguments and calls into these modules.

pub mod components;
pub mod console;
pub mod demo;
pub mod processors;
pub mod registry;
pub mod runtime;
pub mod tools;
pub mod topology;
