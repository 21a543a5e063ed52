//! Intent classification by word overlap, for Classification nodes and the
//! flow's context switches.
//!
//! The method is deliberately simple, so that a flow's author can predict
//! it: both the person's text and each example phrase are split into words
//! (runs of alphanumeric characters, lowercased), duplicates dropped, and
//! scored by the cosine of the two word sets:
//!
//! ```text
//! score = |common words| / sqrt(|words of the text| × |words of the example|)
//! ```
//!
//! Equal word lists score exactly 1.0; a text or an example with no words
//! scores 0. Scores lie in `0..=1`. An intent scores as its best example;
//! among intents that reach their threshold the highest score wins, and a
//! tie goes to the intent listed first.

/// The words of `text`: runs of alphanumeric characters, lowercased, in
/// order, repeats included.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A phrase ready for scoring: its word list and its sorted set of words.
struct Phrase {
    list: Vec<String>,
    set: Vec<String>,
}

impl Phrase {
    fn new(text: &str) -> Self {
        let list = words(text);
        let mut set = list.clone();
        set.sort_unstable();
        set.dedup();
        Phrase { list, set }
    }

    fn similarity(&self, other: &Phrase) -> f64 {
        if self.set.is_empty() || other.set.is_empty() {
            return 0.0;
        }
        if self.list == other.list {
            return 1.0;
        }
        // Both sets are sorted: count the common words in one merge.
        let (mut i, mut j, mut common) = (0, 0, 0usize);
        while i < self.set.len() && j < other.set.len() {
            match self.set[i].cmp(&other.set[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    common += 1;
                    i += 1;
                    j += 1;
                }
            }
        }
        let denominator = ((self.set.len() * other.set.len()) as f64).sqrt();
        (common as f64 / denominator).min(1.0)
    }

    fn best_of(&self, examples: &[String]) -> f64 {
        examples
            .iter()
            .map(|e| self.similarity(&Phrase::new(e)))
            .fold(0.0, f64::max)
    }
}

/// How well `text` matches the best of `examples`, from 0 to 1.
pub fn score(text: &str, examples: &[String]) -> f64 {
    Phrase::new(text).best_of(examples)
}

/// The intent `text` expresses: of `intents`, given as (examples,
/// threshold), the index and score of the highest-scoring one whose score
/// is at or above its threshold; a tie goes to the earlier one. `None` when
/// no intent reaches its threshold.
pub fn best<'e, I>(text: &str, intents: I) -> Option<(usize, f64)>
where
    I: IntoIterator<Item = (&'e [String], f64)>,
{
    let text = Phrase::new(text);
    let mut best: Option<(usize, f64)> = None;
    for (i, (examples, threshold)) in intents.into_iter().enumerate() {
        let score = text.best_of(examples);
        let beats = match best {
            Some((_, s)) => score > s,
            None => true,
        };
        if score >= threshold && beats {
            best = Some((i, score));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ex(phrases: &[&str]) -> Vec<String> {
        phrases.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scores_by_shared_words() {
        assert_eq!(
            score("I want to PAY my bill", &ex(&["pay my bill"])),
            3.0 / 18f64.sqrt()
        );
        assert_eq!(score("Pay, my bill!", &ex(&["pay my bill"])), 1.0);
        assert_eq!(score("bill my pay", &ex(&["pay my bill"])), 1.0);
        assert_eq!(score("hello", &ex(&["pay my bill"])), 0.0);
        assert_eq!(score("", &ex(&["pay"])), 0.0);
        assert_eq!(score("pay", &ex(&["", "?!"])), 0.0);
        assert_eq!(score("pay", &[]), 0.0);
        // The best example counts.
        assert_eq!(score("agent", &ex(&["talk to a person", "agent"])), 1.0);
    }

    #[test]
    fn best_respects_thresholds_and_prefers_the_earlier_on_ties() {
        let a = ex(&["pay bill"]);
        let b = ex(&["bill pay"]);
        let c = ex(&["cancel"]);
        let intents = || {
            [
                (a.as_slice(), 0.5),
                (b.as_slice(), 0.5),
                (c.as_slice(), 0.5),
            ]
        };
        assert_eq!(best("pay bill", intents()), Some((0, 1.0)));
        assert_eq!(
            best("cancel please", intents()),
            Some((2, 1.0 / 2f64.sqrt()))
        );
        assert_eq!(best("nothing at all", intents()), None);
        // Below its own threshold an intent does not count, even if best.
        assert_eq!(
            best("cancel it", [(c.as_slice(), 0.9), (a.as_slice(), 0.0)]),
            Some((1, 0.0))
        );
    }

    proptest! {
        #[test]
        fn a_phrase_scores_one_against_itself(phrase in "[A-Za-z0-9 ,.!?']{0,40}") {
            prop_assume!(!words(&phrase).is_empty());
            prop_assert_eq!(score(&phrase, std::slice::from_ref(&phrase)), 1.0);
            prop_assert_eq!(score(&phrase.to_uppercase(), std::slice::from_ref(&phrase)), 1.0);
        }

        #[test]
        fn scores_lie_between_zero_and_one(
            text in "[a-e ]{0,30}",
            examples in proptest::collection::vec("[a-e ]{0,30}", 0..4),
        ) {
            let s = score(&text, &examples);
            prop_assert!((0.0..=1.0).contains(&s), "{}", s);
        }

        #[test]
        fn scoring_is_symmetric(a in "[a-f ]{0,20}", b in "[a-f ]{0,20}") {
            prop_assert_eq!(score(&a, std::slice::from_ref(&b)), score(&b, std::slice::from_ref(&a)));
        }
    }
}
