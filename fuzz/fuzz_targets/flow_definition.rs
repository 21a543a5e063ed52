//! Any bytes as a flow definition, by both ways one is read: the store's
//! (straight into the type, then validated) and the API's (`from_json`, which
//! decodes node by node). A flow the API accepts must also read back from
//! what the store writes, unchanged.

#![no_main]

use herald_core::flow::FlowDefinition;
use herald_core::Channel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(flow) = serde_json::from_slice::<FlowDefinition>(data) {
        for channel in Channel::ALL {
            let _ = flow.validate(channel);
        }
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for channel in Channel::ALL {
        if let Ok(flow) = FlowDefinition::from_json(&value, channel) {
            let stored = serde_json::to_vec(&flow).expect("a flow serialises");
            let read: FlowDefinition =
                serde_json::from_slice(&stored).expect("a stored flow reads back");
            assert_eq!(read, flow);
        }
    }
});
