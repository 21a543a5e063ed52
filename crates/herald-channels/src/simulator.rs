//! The built-in simulator (CONTRACT §8): outcomes chosen by the last two
//! digits of the destination, after short, configurable delays.

use std::time::Duration;

use async_trait::async_trait;
use herald_core::session::MessageStatus;
use herald_core::Channel;

use crate::*;

#[derive(Debug, Clone)]
pub struct Simulator {
    /// The pause before each simulated step (ringing, speaking, each status).
    pub delay: Duration,
}

impl Default for Simulator {
    fn default() -> Self {
        Simulator {
            delay: Duration::from_millis(20),
        }
    }
}

impl Simulator {
    pub fn new(delay: Duration) -> Self {
        Simulator { delay }
    }

    /// The table of CONTRACT §8.1, voice column.
    pub fn call_result(last_two_digits: Option<u8>) -> CallResult {
        match last_two_digits {
            Some(90) => CallResult::NotAnswered(CallFailure::Busy),
            Some(91) => CallResult::NotAnswered(CallFailure::Rejected),
            Some(92) => CallResult::NotAnswered(CallFailure::Timeout),
            Some(93) => CallResult::NotAnswered(CallFailure::Failed),
            Some(94) => CallResult::NotAnswered(CallFailure::Cancelled),
            Some(95) => CallResult::Answered(AnsweredBy::Machine),
            _ => CallResult::Answered(AnsweredBy::Person),
        }
    }

    /// The table of CONTRACT §8.1, messaging columns.
    pub fn message_statuses(
        channel: Channel,
        last_two_digits: Option<u8>,
    ) -> &'static [MessageStatus] {
        use MessageStatus::*;
        let whatsapp = channel == Channel::Whatsapp;
        match last_two_digits {
            Some(90) => &[Rejected],
            Some(91) => &[Failed],
            Some(92) => &[Sent, Delivered],
            Some(93) => &[Sent],
            _ if whatsapp => &[Sent, Delivered, Read],
            _ => &[Sent, Delivered],
        }
    }
}

#[async_trait]
impl Provider for Simulator {
    fn dial(&self, call: &CallRequest) -> Dialled {
        Dialled {
            after: self.delay,
            result: Self::call_result(call.last_two_digits),
        }
    }

    async fn say(&self, _call: &CallRequest, _text: &str) {
        tokio::time::sleep(self.delay).await;
    }

    async fn hang_up(&self, _call: &CallRequest) {}

    async fn transfer(&self, _call: &CallRequest, _to: &str) {
        tokio::time::sleep(self.delay).await;
    }

    fn send(&self, message: &OutboundMessage) -> Vec<Reported> {
        Self::message_statuses(message.channel, message.last_two_digits)
            .iter()
            .zip(1..)
            .map(|(&status, n)| Reported {
                after: self.delay * n,
                status,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MessageStatus::*;

    #[test]
    fn follows_the_contract_table() {
        assert_eq!(
            Simulator::call_result(Some(90)),
            CallResult::NotAnswered(CallFailure::Busy)
        );
        assert_eq!(
            Simulator::call_result(Some(95)),
            CallResult::Answered(AnsweredBy::Machine)
        );
        assert_eq!(
            Simulator::call_result(Some(23)),
            CallResult::Answered(AnsweredBy::Person)
        );
        assert_eq!(
            Simulator::call_result(None),
            CallResult::Answered(AnsweredBy::Person)
        );
        assert_eq!(
            Simulator::message_statuses(Channel::Sms, Some(90)),
            &[Rejected]
        );
        assert_eq!(
            Simulator::message_statuses(Channel::Whatsapp, Some(91)),
            &[Failed]
        );
        assert_eq!(
            Simulator::message_statuses(Channel::Whatsapp, Some(92)),
            &[Sent, Delivered]
        );
        assert_eq!(Simulator::message_statuses(Channel::Sms, Some(93)), &[Sent]);
        assert_eq!(
            Simulator::message_statuses(Channel::Sms, Some(94)),
            &[Sent, Delivered]
        );
        assert_eq!(
            Simulator::message_statuses(Channel::Whatsapp, Some(95)),
            &[Sent, Delivered, Read]
        );
        assert_eq!(
            Simulator::message_statuses(Channel::Sms, Some(12)),
            &[Sent, Delivered]
        );
    }

    #[test]
    fn reports_statuses_in_order_one_delay_apart() {
        let sim = Simulator::new(Duration::from_millis(7));
        let reported = sim.send(&OutboundMessage {
            channel: Channel::Whatsapp,
            to: "447700900123".into(),
            from: "447700900000".into(),
            content: MessageContent::Text("hi".into()),
            last_two_digits: Some(23),
        });
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            reported,
            [
                Reported {
                    after: ms(7),
                    status: Sent
                },
                Reported {
                    after: ms(14),
                    status: Delivered
                },
                Reported {
                    after: ms(21),
                    status: Read
                },
            ]
        );
    }
}
