//! [`FlowRecord`]: one flow log record, typed, with every catalog field.
//!
//! Absent values (`-` in text, null in Parquet) are `None`. NODATA and SKIPDATA rows are
//! records whose `log_status` says so and whose traffic fields are `None`
//! ([`FlowRecord::no_data`], [`FlowRecord::skip_data`]). The `version` field is not
//! stored: it is a property of the format the record is written in (spec §2), computed by
//! [`crate::LogFormat::version`].

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::field::FieldId;

/// Shared, immutable text value. Cloning it is a reference-count increment, so metadata
/// such as account or interface ids can be stamped on many records cheaply.
pub type Text = Arc<str>;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $( $variant:ident = $text:literal ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name { $( #[doc = concat!("`", $text, "`")] $variant, )* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];

            /// Returns the value exactly as flow logs write it.
            pub const fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $( $text => Ok($name::$variant), )* _ => Err(()) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

string_enum!(
    /// Value of `action`.
    Action { Accept = "ACCEPT", Reject = "REJECT" }
);
string_enum!(
    /// Value of `log-status`.
    LogStatus { Ok = "OK", NoData = "NODATA", SkipData = "SKIPDATA" }
);
string_enum!(
    /// Value of `type`.
    TrafficType { IPv4 = "IPv4", IPv6 = "IPv6", Efa = "EFA" }
);
string_enum!(
    /// Value of `flow-direction`.
    FlowDirection { Ingress = "ingress", Egress = "egress" }
);

/// One flow log record. Field names follow the catalog with `-` → `_` (`type` is
/// `traffic_type`).
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FlowRecord {
    pub account_id: Option<Text>,
    pub interface_id: Option<Text>,
    pub srcaddr: Option<IpAddr>,
    pub dstaddr: Option<IpAddr>,
    pub srcport: Option<u16>,
    pub dstport: Option<u16>,
    pub protocol: Option<u8>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub start: Option<u64>,
    pub end: Option<u64>,
    pub action: Option<Action>,
    pub log_status: Option<LogStatus>,
    pub vpc_id: Option<Text>,
    pub subnet_id: Option<Text>,
    pub instance_id: Option<Text>,
    pub tcp_flags: Option<u16>,
    pub traffic_type: Option<TrafficType>,
    pub pkt_srcaddr: Option<IpAddr>,
    pub pkt_dstaddr: Option<IpAddr>,
    pub region: Option<Text>,
    pub az_id: Option<Text>,
    pub sublocation_type: Option<Text>,
    pub sublocation_id: Option<Text>,
    pub pkt_src_aws_service: Option<Text>,
    pub pkt_dst_aws_service: Option<Text>,
    pub flow_direction: Option<FlowDirection>,
    pub traffic_path: Option<u8>,
    pub ecs_cluster_arn: Option<Text>,
    pub ecs_cluster_name: Option<Text>,
    pub ecs_container_instance_arn: Option<Text>,
    pub ecs_container_instance_id: Option<Text>,
    pub ecs_container_id: Option<Text>,
    pub ecs_second_container_id: Option<Text>,
    pub ecs_service_name: Option<Text>,
    pub ecs_task_definition_arn: Option<Text>,
    pub ecs_task_arn: Option<Text>,
    pub ecs_task_id: Option<Text>,
    pub reject_reason: Option<Text>,
    pub resource_id: Option<Text>,
    pub encryption_status: Option<u8>,
    pub instance_tag: Option<Text>,
    pub instance_tag_2: Option<Text>,
    pub interface_tag: Option<Text>,
    pub interface_tag_2: Option<Text>,
    pub asg_tag: Option<Text>,
    pub asg_tag_2: Option<Text>,
    pub interface_type: Option<Text>,
    pub next_hop_interface_id: Option<Text>,
    pub next_hop_subnet_id: Option<Text>,
    pub next_hop_az_id: Option<Text>,
    pub next_hop_vpc_id: Option<Text>,
    pub next_hop_interface_type: Option<Text>,
}

/// A field's value, borrowed from a record, as the encoders see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Not applicable or unknown: `-` in text, null in Parquet.
    Absent,
    /// An integer field's value.
    Int(i64),
    /// A text field's value (including enumerations such as `ACCEPT`).
    Str(&'a str),
    /// An address field's value.
    Ip(IpAddr),
}

/// A value that does not fit its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field '{field}': '{value}' {problem}")]
pub struct ValueError {
    /// The field the value was meant for.
    pub field: FieldId,
    /// The offending value, as given.
    pub value: String,
    /// What is wrong with it (`is not an integer`, `is not an IP address`, …).
    pub problem: String,
}

impl ValueError {
    fn new(field: FieldId, value: impl fmt::Display, problem: impl Into<String>) -> Self {
        ValueError {
            field,
            value: value.to_string(),
            problem: problem.into(),
        }
    }
}

macro_rules! slots {
    (text: $($tv:ident => $tf:ident),* ; ip: $($iv:ident => $if:ident),* $(;)?) => {
        impl FlowRecord {
            /// Returns true if `field` is a free-text field (stored as [`Text`]).
            #[inline]
            pub const fn is_text_field(field: FieldId) -> bool {
                matches!(field, $( FieldId::$tv )|*)
            }

            /// Returns the value of a text or address field in one dispatch; other fields are
            /// `None`.
            #[inline]
            fn slot_value(&self, field: FieldId) -> Option<Value<'_>> {
                match field {
                    $( FieldId::$tv => Some(self.$tf.as_deref().map_or(Value::Absent, Value::Str)), )*
                    $( FieldId::$iv => Some(self.$if.map_or(Value::Absent, Value::Ip)), )*
                    _ => None,
                }
            }
            fn text_slot_mut(&mut self, field: FieldId) -> Option<&mut Option<Text>> {
                match field { $( FieldId::$tv => Some(&mut self.$tf), )* _ => None }
            }
            fn ip_slot_mut(&mut self, field: FieldId) -> Option<&mut Option<IpAddr>> {
                match field { $( FieldId::$iv => Some(&mut self.$if), )* _ => None }
            }
        }
    };
}

slots! {
    text: AccountId => account_id, InterfaceId => interface_id, VpcId => vpc_id,
        SubnetId => subnet_id, InstanceId => instance_id, Region => region, AzId => az_id,
        SublocationType => sublocation_type, SublocationId => sublocation_id,
        PktSrcAwsService => pkt_src_aws_service, PktDstAwsService => pkt_dst_aws_service,
        EcsClusterArn => ecs_cluster_arn, EcsClusterName => ecs_cluster_name,
        EcsContainerInstanceArn => ecs_container_instance_arn,
        EcsContainerInstanceId => ecs_container_instance_id, EcsContainerId => ecs_container_id,
        EcsSecondContainerId => ecs_second_container_id, EcsServiceName => ecs_service_name,
        EcsTaskDefinitionArn => ecs_task_definition_arn, EcsTaskArn => ecs_task_arn,
        EcsTaskId => ecs_task_id, RejectReason => reject_reason, ResourceId => resource_id,
        InstanceTag => instance_tag, InstanceTag2 => instance_tag_2, InterfaceTag => interface_tag,
        InterfaceTag2 => interface_tag_2, AsgTag => asg_tag, AsgTag2 => asg_tag_2,
        InterfaceType => interface_type, NextHopInterfaceId => next_hop_interface_id,
        NextHopSubnetId => next_hop_subnet_id, NextHopAzId => next_hop_az_id,
        NextHopVpcId => next_hop_vpc_id, NextHopInterfaceType => next_hop_interface_type;
    ip: SrcAddr => srcaddr, DstAddr => dstaddr, PktSrcAddr => pkt_srcaddr, PktDstAddr => pkt_dstaddr;
}

fn opt_int<T: Into<i64>>(v: Option<T>) -> Value<'static> {
    v.map_or(Value::Absent, |v| Value::Int(v.into()))
}

fn opt_u64(v: Option<u64>) -> Value<'static> {
    // Values above i64::MAX are refused on the way in (`set_int`), so this never saturates
    // for decoded records; a caller that stores such a value gets i64::MAX.
    v.map_or(Value::Absent, |v| {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    })
}

fn opt_enum<E>(v: Option<E>, as_str: fn(E) -> &'static str) -> Value<'static> {
    v.map_or(Value::Absent, |e| Value::Str(as_str(e)))
}

fn int_in<T: TryFrom<i64>>(field: FieldId, v: i64, max: i64) -> Result<T, ValueError> {
    T::try_from(v).map_err(|_| ValueError::new(field, v, format!("is out of range 0..={max}")))
}

impl FlowRecord {
    /// Returns a NODATA record: no traffic on the interface between `start` and `end`.
    pub fn no_data(
        account_id: Option<Text>,
        interface_id: Option<Text>,
        start: u64,
        end: u64,
    ) -> Self {
        Self::status_row(LogStatus::NoData, account_id, interface_id, start, end)
    }

    /// Returns a SKIPDATA record: records of the interface were lost between `start` and `end`.
    pub fn skip_data(
        account_id: Option<Text>,
        interface_id: Option<Text>,
        start: u64,
        end: u64,
    ) -> Self {
        Self::status_row(LogStatus::SkipData, account_id, interface_id, start, end)
    }

    fn status_row(
        status: LogStatus,
        account_id: Option<Text>,
        interface_id: Option<Text>,
        start: u64,
        end: u64,
    ) -> Self {
        FlowRecord {
            account_id,
            interface_id,
            start: Some(start),
            end: Some(end),
            log_status: Some(status),
            ..FlowRecord::default()
        }
    }

    /// Returns the value of `field`. `version` is [`Value::Absent`]: it belongs to the format.
    #[inline]
    pub fn get(&self, field: FieldId) -> Value<'_> {
        match field {
            FieldId::SrcPort => opt_int(self.srcport),
            FieldId::DstPort => opt_int(self.dstport),
            FieldId::Protocol => opt_int(self.protocol),
            FieldId::Packets => opt_u64(self.packets),
            FieldId::Bytes => opt_u64(self.bytes),
            FieldId::Start => opt_u64(self.start),
            FieldId::End => opt_u64(self.end),
            FieldId::TcpFlags => opt_int(self.tcp_flags),
            FieldId::TrafficPath => opt_int(self.traffic_path),
            FieldId::EncryptionStatus => opt_int(self.encryption_status),
            FieldId::Action => opt_enum(self.action, Action::as_str),
            FieldId::LogStatus => opt_enum(self.log_status, LogStatus::as_str),
            FieldId::Type => opt_enum(self.traffic_type, TrafficType::as_str),
            FieldId::FlowDirection => opt_enum(self.flow_direction, FlowDirection::as_str),
            FieldId::Version => Value::Absent,
            _ => self.slot_value(field).unwrap_or(Value::Absent),
        }
    }

    /// Marks `field` as absent.
    pub fn clear(&mut self, field: FieldId) {
        if let Some(slot) = self.text_slot_mut(field) {
            *slot = None;
        } else if let Some(slot) = self.ip_slot_mut(field) {
            *slot = None;
        } else {
            match field {
                FieldId::SrcPort => self.srcport = None,
                FieldId::DstPort => self.dstport = None,
                FieldId::Protocol => self.protocol = None,
                FieldId::Packets => self.packets = None,
                FieldId::Bytes => self.bytes = None,
                FieldId::Start => self.start = None,
                FieldId::End => self.end = None,
                FieldId::TcpFlags => self.tcp_flags = None,
                FieldId::TrafficPath => self.traffic_path = None,
                FieldId::EncryptionStatus => self.encryption_status = None,
                FieldId::Action => self.action = None,
                FieldId::LogStatus => self.log_status = None,
                FieldId::Type => self.traffic_type = None,
                FieldId::FlowDirection => self.flow_direction = None,
                _ => {}
            }
        }
    }

    /// Sets an integer field, checking its range. `version` accepts 0..=255 and is not stored.
    pub fn set_int(&mut self, field: FieldId, v: i64) -> Result<(), ValueError> {
        const U16: i64 = u16::MAX as i64;
        const U8: i64 = u8::MAX as i64;
        if v < 0 {
            return Err(ValueError::new(field, v, "is negative"));
        }
        match field {
            FieldId::Version => {
                int_in::<u8>(field, v, U8)?;
            }
            FieldId::SrcPort => self.srcport = Some(int_in(field, v, U16)?),
            FieldId::DstPort => self.dstport = Some(int_in(field, v, U16)?),
            FieldId::Protocol => self.protocol = Some(int_in(field, v, U8)?),
            FieldId::TcpFlags => self.tcp_flags = Some(int_in(field, v, U16)?),
            FieldId::TrafficPath => self.traffic_path = Some(int_in(field, v, U8)?),
            FieldId::EncryptionStatus => self.encryption_status = Some(int_in(field, v, U8)?),
            // v >= 0 was checked above, so the conversion to u64 cannot fail.
            FieldId::Packets => self.packets = Some(v.unsigned_abs()),
            FieldId::Bytes => self.bytes = Some(v.unsigned_abs()),
            FieldId::Start => self.start = Some(v.unsigned_abs()),
            FieldId::End => self.end = Some(v.unsigned_abs()),
            _ => {
                return Err(ValueError::new(
                    field,
                    v,
                    "is an integer, but the field holds text",
                ));
            }
        }
        Ok(())
    }

    /// Sets a field from its textual value (not `-`): parses addresses, enumerations and
    /// integers; stores text as given. Text values must be non-empty and free of
    /// whitespace, since the text format separates fields by spaces.
    pub fn set_str(&mut self, field: FieldId, s: &str) -> Result<(), ValueError> {
        if field.is_integer() {
            let v: i64 = s
                .parse()
                .map_err(|_| ValueError::new(field, s, "is not an integer"))?;
            return self.set_int(field, v);
        }
        if let Some(slot) = self.ip_slot_mut(field) {
            let ip = s
                .parse::<IpAddr>()
                .map_err(|_| ValueError::new(field, s, "is not an IP address"))?;
            *slot = Some(ip);
            return Ok(());
        }
        fn parse_enum<E: FromStr + Copy + fmt::Display>(
            field: FieldId,
            s: &str,
            all: &[E],
        ) -> Result<E, ValueError> {
            s.parse::<E>().map_err(|_| {
                let valid: Vec<String> = all.iter().map(ToString::to_string).collect();
                ValueError::new(field, s, format!("is not one of {}", valid.join(", ")))
            })
        }
        match field {
            FieldId::Action => self.action = Some(parse_enum(field, s, Action::ALL)?),
            FieldId::LogStatus => self.log_status = Some(parse_enum(field, s, LogStatus::ALL)?),
            FieldId::Type => self.traffic_type = Some(parse_enum(field, s, TrafficType::ALL)?),
            FieldId::FlowDirection => {
                self.flow_direction = Some(parse_enum(field, s, FlowDirection::ALL)?)
            }
            _ => {
                check_text(field, s)?;
                if let Some(slot) = self.text_slot_mut(field) {
                    *slot = Some(Text::from(s));
                }
            }
        }
        Ok(())
    }

    /// Sets a text field to an already shared value (avoids an allocation per record when a
    /// decoder sees the same value again). Falls back to [`FlowRecord::set_str`] for fields
    /// that are not plain text.
    pub fn set_text_shared(&mut self, field: FieldId, value: &Text) -> Result<(), ValueError> {
        match self.text_slot_mut(field) {
            Some(slot) => {
                check_text(field, value)?;
                *slot = Some(Text::clone(value));
                Ok(())
            }
            None => self.set_str(field, value),
        }
    }
}

fn check_text(field: FieldId, s: &str) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::new(field, s, "is empty"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValueError::new(
            field,
            s.escape_debug(),
            "contains whitespace or control characters",
        ));
    }
    Ok(())
}

/// Returns the `tcp-flags` contribution of one TCP header's flag byte (spec §3.3): FIN 1,
/// SYN 2, RST 4, and 16 (ACK) only together with SYN, so SYN-ACK is 18. Other bits count
/// for nothing. OR the results over the packets of a record.
pub const fn aws_tcp_flags(header_flags: u8) -> u16 {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    let mut v = 0u16;
    if header_flags & FIN != 0 {
        v |= 1;
    }
    if header_flags & SYN != 0 {
        v |= 2;
        if header_flags & ACK != 0 {
            v |= 16;
        }
    }
    if header_flags & RST != 0 {
        v |= 4;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_round_trips_through_get_and_set() {
        let mut r = FlowRecord::default();
        for f in FieldId::ALL
            .iter()
            .copied()
            .filter(|f| *f != FieldId::Version)
        {
            let sample = match f {
                FieldId::SrcAddr | FieldId::PktSrcAddr => "10.0.0.1",
                FieldId::DstAddr | FieldId::PktDstAddr => "2001:db8::1",
                FieldId::Action => "REJECT",
                FieldId::LogStatus => "SKIPDATA",
                FieldId::Type => "IPv6",
                FieldId::FlowDirection => "egress",
                f if f.is_integer() => "7",
                _ => "x-1",
            };
            r.set_str(f, sample).expect("sample fits");
            let shown = match r.get(f) {
                Value::Int(i) => i.to_string(),
                Value::Str(s) => s.to_owned(),
                Value::Ip(ip) => ip.to_string(),
                Value::Absent => "-".to_owned(),
            };
            assert_eq!(shown, sample, "{f}");
            r.clear(f);
            assert_eq!(r.get(f), Value::Absent, "{f}");
        }
        assert_eq!(r, FlowRecord::default());
    }

    #[test]
    fn bad_values_name_field_and_value() {
        let mut r = FlowRecord::default();
        let e = r.set_str(FieldId::SrcPort, "70000").unwrap_err();
        assert_eq!(
            e.to_string(),
            "field 'srcport': '70000' is out of range 0..=65535"
        );
        let e = r.set_str(FieldId::SrcAddr, "10.0.0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "field 'srcaddr': '10.0.0' is not an IP address"
        );
        let e = r.set_str(FieldId::Bytes, "12x").unwrap_err();
        assert_eq!(e.to_string(), "field 'bytes': '12x' is not an integer");
        let e = r.set_str(FieldId::Action, "accept").unwrap_err();
        assert_eq!(
            e.to_string(),
            "field 'action': 'accept' is not one of ACCEPT, REJECT"
        );
        assert!(r.set_str(FieldId::VpcId, "a b").is_err());
        assert!(r.set_int(FieldId::Packets, -1).is_err());
        assert!(r.set_int(FieldId::AccountId, 1).is_err());
    }

    #[test]
    fn tcp_flag_rule_matches_spec() {
        assert_eq!(aws_tcp_flags(0x02), 2); // SYN
        assert_eq!(aws_tcp_flags(0x12), 18); // SYN-ACK
        assert_eq!(aws_tcp_flags(0x11), 1); // FIN-ACK
        assert_eq!(aws_tcp_flags(0x10), 0); // bare ACK
        assert_eq!(aws_tcp_flags(0x18), 0); // PSH-ACK
        assert_eq!(aws_tcp_flags(0x42), 2); // SYN+ECE
        assert_eq!(aws_tcp_flags(0x14), 4); // RST-ACK
        assert_eq!(aws_tcp_flags(0x02) | aws_tcp_flags(0x01), 3);
        assert_eq!(aws_tcp_flags(0x12) | aws_tcp_flags(0x11), 19);
    }

    #[test]
    fn status_rows_have_only_identity_and_times() {
        let r = FlowRecord::no_data(Some("123456789010".into()), Some("eni-1".into()), 1, 2);
        assert_eq!(r.log_status, Some(LogStatus::NoData));
        assert_eq!(r.get(FieldId::SrcAddr), Value::Absent);
        assert_eq!(r.get(FieldId::Action), Value::Absent);
        assert_eq!(r.get(FieldId::Start), Value::Int(1));
    }
}
