//! `verify`'s verdict: the records read from the input, output and dead-letter topics compared by request
//! id, per input partition. Pure: no I/O.

use std::collections::HashMap;

/// One record as the verifier sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub partition: i32,
    pub offset: i64,
    /// A dead letter's source, `topic/partition@offset` from its `uid2-source-*` headers: it names the
    /// input record exactly, whatever the payload (a too-large record is dead-lettered without one).
    pub source: Option<String>,
}

/// What the verifier found for one input partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    /// Records in the input partition.
    pub input: u64,
    /// Distinct inputs with an output record (first deliveries).
    pub output: u64,
    /// Distinct inputs with a dead letter.
    pub dead_lettered: u64,
    /// Inputs in neither the output nor the dead-letter topic.
    pub lost: u64,
    /// Deliveries beyond the first (output and dead-letter together).
    pub duplicates: u64,
    /// Inputs delivered more than once.
    pub duplicated_ids: u64,
    /// The most deliveries of one input.
    pub max_multiplicity: u64,
    /// First deliveries that came after the first delivery of a later input of the same input partition
    /// in the same output (or dead-letter) partition.
    pub out_of_order: u64,
}

/// The verdict over all partitions, with a few example ids of what went wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub partitions: Vec<PartitionReport>,
    pub input: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub max_multiplicity: u64,
    pub out_of_order: u64,
    /// Output or dead-letter records whose id is not in the input (another run's records, or a bug).
    pub unexpected: u64,
    /// Input records sharing an id with an earlier input record (they are verified as one).
    pub input_id_collisions: u64,
    /// Records of the output and dead-letter topics below their low watermark (deleted by retention),
    /// which the verifier cannot see: when not 0, losses and reorderings may be the broker's deletions.
    pub unreadable: i64,
    pub lost_examples: Vec<String>,
    pub out_of_order_examples: Vec<String>,
}

impl Report {
    /// Nothing lost and per-partition order kept (duplicates are allowed: the stage is at-least-once).
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.out_of_order == 0
    }

    /// A table for people.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<28} {:>5} {:>9} {:>9} {:>8} {:>6} {:>10} {:>8} {:>12}",
            "input topic",
            "part",
            "input",
            "output",
            "dlq",
            "lost",
            "duplicates",
            "max_mult",
            "out_of_order"
        );
        for p in &self.partitions {
            let _ = writeln!(
                s,
                "{:<28} {:>5} {:>9} {:>9} {:>8} {:>6} {:>10} {:>8} {:>12}",
                p.topic,
                p.partition,
                p.input,
                p.output,
                p.dead_lettered,
                p.lost,
                p.duplicates,
                p.max_multiplicity,
                p.out_of_order
            );
        }
        let _ = writeln!(
            s,
            "total: {} input, {} lost, {} duplicates (max multiplicity {}), {} out of order, {} unexpected, {} input id collisions",
            self.input,
            self.lost,
            self.duplicates,
            self.max_multiplicity,
            self.out_of_order,
            self.unexpected,
            self.input_id_collisions
        );
        if self.unreadable > 0 {
            let _ = writeln!(
                s,
                "warning: {} output/dead-letter records were already deleted by the broker (low watermark > 0); losses and reorderings may be those deletions",
                self.unreadable
            );
        }
        if !self.lost_examples.is_empty() {
            let _ = writeln!(s, "lost, e.g.: {}", self.lost_examples.join(", "));
        }
        if !self.out_of_order_examples.is_empty() {
            let _ = writeln!(
                s,
                "out of order, e.g.: {}",
                self.out_of_order_examples.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "verdict: {}",
            if self.ok() {
                "OK (nothing lost, order kept)"
            } else {
                "FAILED"
            }
        );
        s
    }
}

/// Compares the records of the input topic(s) (`(topic, record)`), the output topic and the dead-letter
/// topic, each in partition-then-offset order as read.
pub fn analyze(input: &[(String, Seen)], output: &[Seen], dlq: &[Seen]) -> Report {
    let mut inputs = Inputs::index(input);
    let mut deliveries = Deliveries::with_capacity(inputs.by_id.len());
    for (records, is_dlq) in [(output, false), (dlq, true)] {
        inputs.deliver(records, is_dlq, &mut deliveries);
    }
    let mut lost_examples = inputs.tally(&deliveries);
    lost_examples.sort();
    let mut report = Report {
        unexpected: deliveries.unexpected,
        input_id_collisions: inputs.collisions,
        lost_examples,
        out_of_order_examples: deliveries.out_of_order_examples,
        ..Report::default()
    };
    let mut partitions = inputs.partitions;
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    for p in &partitions {
        report.input += p.input;
        report.lost += p.lost;
        report.duplicates += p.duplicates;
        report.max_multiplicity = report.max_multiplicity.max(p.max_multiplicity);
        report.out_of_order += p.out_of_order;
    }
    report.partitions = partitions;
    report
}

/// The input records by id, with their partitions' reports to fill in.
struct Inputs<'a> {
    partitions: Vec<PartitionReport>,
    /// id → (index of the input partition, input offset)
    by_id: HashMap<&'a str, (usize, i64)>,
    /// `topic/partition@offset` → id, for dead letters that name their source.
    by_coordinates: HashMap<String, &'a str>,
    /// Input records whose id an earlier input record already had.
    collisions: u64,
}

/// What the output and dead-letter records delivered.
struct Deliveries<'a> {
    /// id → deliveries (output and dead-letter together)
    count: HashMap<&'a str, u64>,
    unexpected: u64,
    out_of_order_examples: Vec<String>,
}

impl Deliveries<'_> {
    fn with_capacity(inputs: usize) -> Self {
        Deliveries {
            count: HashMap::with_capacity(inputs),
            unexpected: 0,
            out_of_order_examples: Vec::new(),
        }
    }
}

impl<'a> Inputs<'a> {
    fn index(input: &'a [(String, Seen)]) -> Inputs<'a> {
        let mut partitions: Vec<PartitionReport> = Vec::new();
        let mut partition_index: HashMap<(String, i32), usize> = HashMap::new();
        let mut by_id: HashMap<&str, (usize, i64)> = HashMap::with_capacity(input.len());
        let mut by_coordinates: HashMap<String, &str> = HashMap::new();
        let mut collisions = 0;
        for (topic, r) in input {
            let index = *partition_index
                .entry((topic.clone(), r.partition))
                .or_insert_with(|| {
                    partitions.push(PartitionReport {
                        topic: topic.clone(),
                        partition: r.partition,
                        ..PartitionReport::default()
                    });
                    partitions.len() - 1
                });
            by_coordinates.insert(format!("{topic}/{}@{}", r.partition, r.offset), &r.id);
            if by_id.insert(&r.id, (index, r.offset)).is_some() {
                collisions += 1;
            }
        }
        // Colliding records count once: the last one stands for the id.
        for &(index, _) in by_id.values() {
            if let Some(p) = partitions.get_mut(index) {
                p.input += 1;
            }
        }
        Inputs {
            partitions,
            by_id,
            by_coordinates,
            collisions,
        }
    }

    /// Counts the first deliveries in one topic's `records` and checks their order.
    fn deliver(&mut self, records: &'a [Seen], is_dlq: bool, deliveries: &mut Deliveries<'a>) {
        // (output partition, input partition index) → the largest input offset first-delivered so far.
        let mut high: HashMap<(i32, usize), i64> = HashMap::new();
        for r in records {
            let id: &str = r
                .source
                .as_ref()
                .and_then(|c| self.by_coordinates.get(c).copied())
                .unwrap_or(&r.id);
            let Some(&(index, in_offset)) = self.by_id.get(id) else {
                deliveries.unexpected += 1;
                continue;
            };
            let count = deliveries.count.entry(id).or_insert(0);
            *count += 1;
            let Some(p) = self.partitions.get_mut(index) else {
                continue;
            };
            if *count > 1 {
                continue;
            }
            if is_dlq {
                p.dead_lettered += 1;
            } else {
                p.output += 1;
            }
            let last = high.entry((r.partition, index)).or_insert(i64::MIN);
            if in_offset < *last {
                p.out_of_order += 1;
                if deliveries.out_of_order_examples.len() < 5 {
                    deliveries.out_of_order_examples.push(format!(
                        "{} (input {}/{}@{in_offset} first delivered at partition {} offset {} after input offset {})",
                        id, p.topic, p.partition, r.partition, r.offset, *last
                    ));
                }
            } else {
                *last = in_offset;
            }
        }
    }

    /// Lost and duplicated inputs per partition; returns a few lost ids as examples.
    fn tally(&mut self, deliveries: &Deliveries<'_>) -> Vec<String> {
        let mut lost_examples = Vec::new();
        for (id, &(index, _)) in &self.by_id {
            let Some(p) = self.partitions.get_mut(index) else {
                continue;
            };
            match deliveries.count.get(id).copied().unwrap_or(0) {
                0 => {
                    p.lost += 1;
                    if lost_examples.len() < 5 {
                        lost_examples.push(format!("{id} ({}/{})", p.topic, p.partition));
                    }
                }
                n => {
                    p.duplicates += n - 1;
                    p.duplicated_ids += u64::from(n > 1);
                    p.max_multiplicity = p.max_multiplicity.max(n);
                }
            }
        }
        lost_examples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, partition: i32, offset: i64) -> Seen {
        Seen {
            id: id.to_string(),
            partition,
            offset,
            source: None,
        }
    }

    fn input(ids: &[(&str, i32, i64)]) -> Vec<(String, Seen)> {
        ids.iter()
            .map(|(id, p, o)| ("in".to_string(), seen(id, *p, *o)))
            .collect()
    }

    #[test]
    fn counts_lost_duplicated_and_dead_lettered_per_partition() {
        let input = input(&[("a", 0, 0), ("b", 0, 1), ("c", 0, 2), ("d", 1, 0)]);
        let output = vec![seen("a", 0, 0), seen("a", 0, 1), seen("a", 0, 2)];
        let dlq = vec![seen("b", 0, 0), seen("d", 0, 1)];
        let r = analyze(&input, &output, &dlq);
        assert_eq!(r.input, 4);
        assert_eq!(r.lost, 1);
        assert_eq!(r.lost_examples, vec!["c (in/0)".to_string()]);
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.max_multiplicity, 3);
        let p0 = &r.partitions[0];
        assert_eq!(
            (
                p0.input,
                p0.output,
                p0.dead_lettered,
                p0.lost,
                p0.duplicated_ids
            ),
            (3, 1, 1, 1, 1)
        );
        assert_eq!(
            (r.partitions[1].input, r.partitions[1].dead_lettered),
            (1, 1)
        );
        assert!(!r.ok());
    }

    #[test]
    fn order_is_compared_within_one_input_partition_and_one_output_partition() {
        let input = input(&[("a", 0, 0), ("b", 0, 1), ("c", 0, 2), ("x", 1, 0)]);
        // Output partition 0 holds b before a: out of order. Partition 1 holds c then x (another input
        // partition, not compared); a redelivery of a after c is a duplicate, not a reordering.
        let output = vec![
            seen("b", 0, 0),
            seen("a", 0, 1),
            seen("x", 1, 0),
            seen("c", 1, 1),
            seen("a", 1, 2),
        ];
        let r = analyze(&input, &output, &[]);
        assert_eq!(r.out_of_order, 1, "{r:?}");
        assert_eq!(r.lost, 0);
        assert_eq!(r.duplicates, 1);
        assert!(!r.ok());
        let in_order = vec![seen("a", 0, 0), seen("c", 0, 1), seen("b", 1, 0)];
        let r = analyze(&input[..3], &in_order, &[]);
        assert_eq!(r.out_of_order, 0);
        assert!(r.ok(), "{}", r.render());
    }

    #[test]
    fn records_of_another_run_are_unexpected_and_colliding_input_ids_are_counted() {
        let input = input(&[("a", 0, 0), ("a", 0, 1)]);
        let r = analyze(&input, &[seen("a", 0, 0), seen("zz", 0, 1)], &[]);
        assert_eq!((r.unexpected, r.input_id_collisions, r.lost), (1, 1, 0));
    }

    #[test]
    fn a_dead_letter_maps_to_its_input_by_source_coordinates() {
        let input = input(&[("a", 0, 0), ("b", 0, 1)]);
        let mut dead = seen("key-of-b", 0, 0);
        dead.source = Some("in/0@1".into());
        let r = analyze(&input, &[seen("a", 0, 0)], &[dead]);
        assert_eq!((r.lost, r.unexpected), (0, 0), "{}", r.render());
        assert_eq!(r.partitions[0].dead_lettered, 1);
    }
}
