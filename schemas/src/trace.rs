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
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(parent, &mut parent_id).ok()?;
        let mut flag = [0u8; 1];
        hex::decode_to_slice(flags, &mut flag).ok()?;
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
        hex::encode(self.trace_id)
    }
}

impl std::fmt::Display for Traceparent {
    /// Written on every record's headers: hex into one stack buffer, no allocation.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let hex = |bytes: &[u8], out: &mut [u8]| {
            hex::encode_to_slice(bytes, out).expect("sized for the bytes")
        };
        hex(&self.trace_id, &mut text[3..35]);
        hex(&self.parent_id, &mut text[36..52]);
        hex(&[u8::from(self.sampled)], &mut text[53..55]);
        f.write_str(std::str::from_utf8(&text).expect("hex digits are ASCII"))
    }
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
    fn writes_the_w3c_form_it_reads() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = Traceparent::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            Traceparent::parse(unsampled).unwrap().to_string(),
            unsampled
        );
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
