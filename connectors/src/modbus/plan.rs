//! Which reads one poll makes: neighbouring tags share a request.

use crate::error::ConnectorError;
use crate::modbus::config::{ModbusTagConfig, RegisterKind, MAX_BITS_PER_READ};

/// The reads of one poll, in the order they are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    pub reads: Vec<BlockRead>,
}

/// One request: `count` registers (or bits) of `kind` from `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRead {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
    pub tags: Vec<PlannedTag>,
}

/// A tag fed by a read: its registers are `offset..offset + width` of the
/// read's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedTag {
    /// Index into the machine's `tags`.
    pub tag_index: usize,
    pub offset: u16,
    pub width: u16,
}

impl ReadPlan {
    /// Groups the tags by table, sorts them by address and merges tags whose
    /// spans touch or overlap into one read, as long as the read stays within
    /// `max_registers_per_read` registers (or 2000 bits for coils and
    /// discrete inputs); a gap always starts a new read, so a poll never asks
    /// for addresses no tag needs (devices often answer those with an
    /// exception).
    pub fn build(
        tags: &[ModbusTagConfig],
        max_registers_per_read: u16,
    ) -> Result<Self, ConnectorError> {
        let mut order: Vec<usize> = (0..tags.len()).collect();
        order.sort_by_key(|&i| {
            let t = &tags[i];
            (t.register, t.address, t.data_type.width())
        });

        let mut reads: Vec<BlockRead> = Vec::new();
        for i in order {
            let tag = &tags[i];
            let width = tag.data_type.width();
            let limit = if tag.register.is_bit() {
                MAX_BITS_PER_READ
            } else {
                max_registers_per_read
            };
            let start = u32::from(tag.address);
            let end = start + u32::from(width);
            if width > limit || end > u32::from(u16::MAX) + 1 {
                return Err(ConnectorError::Config(format!(
                    "tag `{}` ({} registers at {}) cannot be read with at most {limit} registers per read",
                    tag.name, width, tag.address
                )));
            }

            if let Some(read) = reads.last_mut() {
                let read_start = u32::from(read.start);
                let read_end = read_start + u32::from(read.count);
                let merged_end = read_end.max(end);
                if read.kind == tag.register
                    && start <= read_end
                    && merged_end - read_start <= u32::from(limit)
                {
                    // Bounded by `limit` (a u16) just above.
                    read.count = (merged_end - read_start) as u16;
                    read.tags.push(PlannedTag {
                        tag_index: i,
                        offset: (start - read_start) as u16,
                        width,
                    });
                    continue;
                }
            }
            reads.push(BlockRead {
                kind: tag.register,
                start: tag.address,
                count: width,
                tags: vec![PlannedTag {
                    tag_index: i,
                    offset: 0,
                    width,
                }],
            });
        }
        Ok(Self { reads })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::{ByteOrder, DataType};

    fn tag(
        name: &str,
        register: RegisterKind,
        address: u16,
        data_type: DataType,
    ) -> ModbusTagConfig {
        ModbusTagConfig {
            name: name.into(),
            register,
            address,
            data_type,
            byte_order: ByteOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    /// (kind, start, count, [(tag index, offset)]) of one read.
    type ReadSummary = (RegisterKind, u16, u16, Vec<(usize, u16)>);

    fn summary(plan: &ReadPlan) -> Vec<ReadSummary> {
        plan.reads
            .iter()
            .map(|r| {
                (
                    r.kind,
                    r.start,
                    r.count,
                    r.tags.iter().map(|t| (t.tag_index, t.offset)).collect(),
                )
            })
            .collect()
    }

    use DataType::*;
    use RegisterKind::*;

    #[test]
    fn contiguous_tags_share_a_read_in_address_order() {
        let tags = [
            tag("c", Holding, 6, U16),
            tag("a", Holding, 0, F32),
            tag("b", Holding, 2, F64),
        ];
        let plan = ReadPlan::build(&tags, 125).unwrap();
        assert_eq!(
            summary(&plan),
            [(Holding, 0, 7, vec![(1, 0), (2, 2), (0, 6)])]
        );
    }

    #[test]
    fn a_gap_starts_a_new_read() {
        let tags = [tag("a", Holding, 0, U32), tag("b", Holding, 3, U16)];
        let plan = ReadPlan::build(&tags, 125).unwrap();
        assert_eq!(
            summary(&plan),
            [(Holding, 0, 2, vec![(0, 0)]), (Holding, 3, 1, vec![(1, 0)])]
        );
    }

    #[test]
    fn tables_are_never_mixed() {
        let tags = [
            tag("h", Holding, 0, U16),
            tag("i", Input, 1, U16),
            tag("c", Coil, 2, Bool),
            tag("d", DiscreteInput, 3, Bool),
            tag("h2", Holding, 1, U16),
        ];
        let plan = ReadPlan::build(&tags, 125).unwrap();
        assert_eq!(
            summary(&plan),
            [
                (Holding, 0, 2, vec![(0, 0), (4, 1)]),
                (Input, 1, 1, vec![(1, 0)]),
                (Coil, 2, 1, vec![(2, 0)]),
                (DiscreteInput, 3, 1, vec![(3, 0)]),
            ]
        );
    }

    #[test]
    fn overlapping_tags_read_the_same_registers() {
        // A u32 and a view of its low word, and a tag inside a longer one.
        let tags = [
            tag("whole", Holding, 10, U64),
            tag("low", Holding, 11, U16),
            tag("pair", Holding, 12, U32),
            tag("tail", Holding, 13, U32),
        ];
        let plan = ReadPlan::build(&tags, 125).unwrap();
        assert_eq!(
            summary(&plan),
            [(Holding, 10, 5, vec![(0, 0), (1, 1), (2, 2), (3, 3)])]
        );
    }

    #[test]
    fn register_reads_stop_at_the_limit() {
        // 130 contiguous u16 registers: 125 + 5 with the protocol limit.
        let tags: Vec<_> = (0..130)
            .map(|i| tag(&format!("r{i}"), Input, i, U16))
            .collect();
        let plan = ReadPlan::build(&tags, 125).unwrap();
        assert_eq!(plan.reads.len(), 2);
        assert_eq!((plan.reads[0].start, plan.reads[0].count), (0, 125));
        assert_eq!((plan.reads[1].start, plan.reads[1].count), (125, 5));
        assert_eq!(
            plan.reads[1].tags[0],
            PlannedTag {
                tag_index: 125,
                offset: 0,
                width: 1
            }
        );

        // A multi-register tag is never split across reads.
        let tags = [tag("a", Holding, 0, U16), tag("b", Holding, 1, F64)];
        let plan = ReadPlan::build(&tags, 4).unwrap();
        assert_eq!(
            summary(&plan),
            [(Holding, 0, 1, vec![(0, 0)]), (Holding, 1, 4, vec![(1, 0)])]
        );
    }

    #[test]
    fn bit_reads_stop_at_2000_bits_whatever_the_register_limit() {
        let tags: Vec<_> = (0..2001)
            .map(|i| tag(&format!("c{i}"), Coil, i, Bool))
            .collect();
        let plan = ReadPlan::build(&tags, 10).unwrap();
        assert_eq!(plan.reads.len(), 2);
        assert_eq!((plan.reads[0].start, plan.reads[0].count), (0, 2000));
        assert_eq!(plan.reads[0].tags.len(), 2000);
        assert_eq!((plan.reads[1].start, plan.reads[1].count), (2000, 1));
    }

    #[test]
    fn the_last_registers_of_the_address_space_are_readable() {
        let tags = [
            tag("end", Holding, 65532, F64),
            tag("bit", Coil, 65535, Bool),
        ];
        let plan = ReadPlan::build(&tags, 125).unwrap();
        assert_eq!(
            summary(&plan),
            [
                (Holding, 65532, 4, vec![(0, 0)]),
                (Coil, 65535, 1, vec![(1, 0)])
            ]
        );
    }

    #[test]
    fn tags_that_cannot_be_read_are_refused() {
        assert!(ReadPlan::build(&[tag("wide", Holding, 0, U64)], 3).is_err());
        assert!(ReadPlan::build(&[tag("past_end", Holding, 65535, U32)], 125).is_err());
    }
}
