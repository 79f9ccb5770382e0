//! W3C Trace Context `traceparent`, carried in a Kafka header on every record so one change
//! can be followed from the ERP webhook to the storefront delivery.

use rand::RngCore;

/// Kafka header name of the trace context.
pub const HEADER: &str = "traceparent";

/// A parsed or freshly started `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    sampled: bool,
}

impl Traceparent {
    /// Starts a new trace.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        rng.fill_bytes(&mut trace_id);
        rng.fill_bytes(&mut parent_id);
        Self {
            trace_id,
            parent_id,
            sampled: true,
        }
    }

    /// A child span in the same trace (a new hop of the pipeline).
    pub fn child(&self) -> Self {
        let mut parent_id = [0u8; 8];
        rand::rng().fill_bytes(&mut parent_id);
        Self { parent_id, ..*self }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; anything else (or all-zero ids) is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() || trace.len() != 32 || parent.len() != 16 {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        hex_decode(trace, &mut trace_id)?;
        hex_decode(parent, &mut parent_id)?;
        let mut flag = [0u8; 1];
        hex_decode(flags, &mut flag)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flag[0] & 1 == 1,
        })
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }
}

impl std::fmt::Display for Traceparent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            u8::from(self.sampled)
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_child_keeps_trace() {
        let root = Traceparent::new_root();
        let parsed = Traceparent::parse(&root.to_string()).unwrap();
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.to_string(), root.to_string());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "01-00000000000000000000000000000001-0000000000000001-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
            "00-xyz-0000000000000001-01",
        ] {
            assert!(Traceparent::parse(bad).is_none(), "{bad}");
        }
    }
}
