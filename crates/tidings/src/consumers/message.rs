//! One consumed message → one publish action, or the reason it cannot be one.
//! Parsing goes through [`crate::publisher::parse_request`] and the request
//! types of the server API, so a command is accepted exactly when the same
//! HTTP request would be.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{ConsumerConfig, MappingConfig, MessageMode};
use crate::config::ApiSettings;
use crate::engine::Audience;
use crate::protocol::{EntityRef, EventMeta};
use crate::publisher::{parse_request, BroadcastRequest, EntityChange, PublishRequest};

/// What a message asks for.
#[derive(Debug)]
pub enum PublishAction {
    /// `/api/publish`.
    Publish(PublishRequest),
    /// `/api/broadcast` (mapping mode produces these too).
    Broadcast(BroadcastRequest),
    /// `/api/events`.
    EntityChange(EntityChange),
    /// The event name matched none of the consumer's `events` patterns.
    Skip,
}

/// A dotted path into a JSON message: `data.entityType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.c`; each segment non-empty, of letters, digits, `_` or `-`.
    pub fn parse(path: &str) -> Result<Self, String> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(|s| {
            s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            return Err(format!(
                "`{path}` is not a field path (names of letters, digits, `_` or `-`, joined by `.`)"
            ));
        }
        Ok(Self(segments))
    }

    /// The value at this path, if every step exists.
    pub fn find<'a>(&self, message: &'a Value) -> Option<&'a Value> {
        self.0
            .iter()
            .try_fold(message, |value, segment| value.get(segment))
            .filter(|value| !value.is_null())
    }

    /// The text of the value at this path in `message` (JSON text), exactly
    /// as the message has it: a value taken through [`Value`] would lose its
    /// spacing, escapes and the precision of large numbers.
    fn find_raw<'a>(&self, message: &'a str) -> Option<&'a RawValue> {
        let mut value: &'a RawValue = serde_json::from_str(message).ok()?;
        for segment in &self.0 {
            // A repeated key: the last one, as `Value` takes it.
            let mut object: std::collections::HashMap<String, &'a RawValue> =
                serde_json::from_str(value.get()).ok()?;
            value = object.remove(segment)?;
        }
        (value.get() != "null").then_some(value)
    }

    fn text(&self) -> String {
        self.0.join(".")
    }
}

/// A channel template: literal text and `{path}` placeholders.
#[derive(Debug, Clone)]
pub struct ChannelTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone)]
enum TemplatePart {
    Literal(String),
    Field(FieldPath),
}

impl ChannelTemplate {
    /// Parses `workspace:{tenantId}:{data.entityType}`.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(TemplatePart::Literal(rest.to_owned()));
                    rest = "";
                }
                Some(at) if rest.as_bytes()[at] == b'}' => {
                    return Err(format!("`{template}` has a `}}` without its `{{`"));
                }
                Some(at) => {
                    if at > 0 {
                        parts.push(TemplatePart::Literal(rest[..at].to_owned()));
                    }
                    let Some(end) = rest[at..].find('}') else {
                        return Err(format!("`{template}` has a `{{` without its `}}`"));
                    };
                    let path = &rest[at + 1..at + end];
                    parts.push(TemplatePart::Field(
                        FieldPath::parse(path).map_err(|e| format!("in `{template}`: {e}"))?,
                    ));
                    rest = &rest[at + end + 1..];
                }
            }
        }
        if parts.is_empty() {
            return Err("a channel template must not be empty".to_owned());
        }
        Ok(Self { parts })
    }

    /// The namespace, when the template spells it out before any placeholder.
    pub fn literal_namespace(&self) -> Option<&str> {
        match self.parts.first() {
            Some(TemplatePart::Literal(text)) => match text.split_once(':') {
                Some((namespace, _)) => Some(namespace),
                // No placeholder at all: the whole name is the namespace.
                None if self.parts.len() == 1 => Some(text),
                None => None,
            },
            _ => None,
        }
    }

    /// Whether any part comes from the message.
    pub fn has_placeholders(&self) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, TemplatePart::Field(_)))
    }

    /// The channel name with every placeholder as `x`: what the template
    /// gives for a message whose values are plain, for checking it at start.
    pub fn sample(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                TemplatePart::Literal(text) => text.as_str(),
                TemplatePart::Field(_) => "x",
            })
            .collect()
    }

    /// The channel name for `message`.
    pub fn render(&self, message: &Value) -> Result<String, String> {
        let mut channel = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(text) => channel.push_str(text),
                TemplatePart::Field(path) => channel.push_str(&scalar(path, message)?),
            }
        }
        Ok(channel)
    }
}

/// A string or number field as text; missing or other types are an error.
fn scalar(path: &FieldPath, message: &Value) -> Result<String, String> {
    match path.find(message) {
        None => Err(format!("missing field `{}`", path.text())),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(format!(
            "field `{}` must be a string or a number",
            path.text()
        )),
    }
}

fn optional_scalar(path: Option<&FieldPath>, message: &Value) -> Result<Option<String>, String> {
    match path {
        Some(path) if path.find(message).is_some() => scalar(path, message).map(Some),
        _ => Ok(None),
    }
}

/// The parsed `[consumers.mapping]`.
#[derive(Debug, Clone)]
struct Mapping {
    id: FieldPath,
    event: FieldPath,
    channels: Vec<ChannelTemplate>,
    data: Option<FieldPath>,
    workspace: Option<FieldPath>,
    entity_type: Option<FieldPath>,
    entity_id: Option<FieldPath>,
    entity_version: Option<FieldPath>,
    actor: Option<FieldPath>,
    correlation_id: Option<FieldPath>,
    audience: Option<FieldPath>,
}

impl Mapping {
    fn new(config: &MappingConfig) -> Result<Self, String> {
        let path = |p: &Option<String>| p.as_deref().map(FieldPath::parse).transpose();
        Ok(Self {
            id: FieldPath::parse(&config.id)?,
            event: FieldPath::parse(&config.event)?,
            channels: config
                .channels
                .iter()
                .map(|c| ChannelTemplate::parse(c))
                .collect::<Result<_, _>>()?,
            data: path(&config.data)?,
            workspace: path(&config.workspace)?,
            entity_type: path(&config.entity_type)?,
            entity_id: path(&config.entity_id)?,
            entity_version: path(&config.entity_version)?,
            actor: path(&config.actor)?,
            correlation_id: path(&config.correlation_id)?,
            audience: path(&config.audience)?,
        })
    }

    /// The request for `message`, parsed from `raw` (its text).
    fn apply(&self, message: &Value, raw: &str) -> Result<BroadcastRequest, String> {
        let id = scalar(&self.id, message)?;
        let event = scalar(&self.event, message)?;
        let workspace = optional_scalar(self.workspace.as_ref(), message)?;
        // Entity metadata is optional on an event that lacks it, unless the
        // entity channels need it (below).
        let entity = match (
            optional_scalar(self.entity_type.as_ref(), message)?,
            optional_scalar(self.entity_id.as_ref(), message)?,
        ) {
            (Some(entity_type), Some(id)) => Some(EntityRef {
                entity_type,
                id,
                version: self.version(message)?,
            }),
            _ => None,
        };
        let channels = if self.channels.is_empty() {
            let workspace = workspace.ok_or_else(|| {
                let path = self.workspace.as_ref().map(FieldPath::text);
                format!("missing field `{}`", path.unwrap_or_default())
            })?;
            let entity = entity.as_ref().ok_or_else(|| {
                let missing = [&self.entity_type, &self.entity_id]
                    .into_iter()
                    .flatten()
                    .find(|path| path.find(message).is_none())
                    .map(FieldPath::text)
                    .unwrap_or_default();
                format!("missing field `{missing}`")
            })?;
            // Same checks as /api/events: each part is one channel segment.
            for (what, value) in [
                ("workspace", &workspace),
                ("entity type", &entity.entity_type),
                ("entity id", &entity.id),
            ] {
                if value.is_empty() || value.contains(':') {
                    // As the publish path words it for `/api/events`.
                    return Err(format!(
                        "bad_request: {what} must be non-empty and contain no ':'"
                    ));
                }
            }
            let base = format!("workspace:{workspace}");
            let typed = format!("{base}:{}", entity.entity_type);
            let single = format!("{typed}:{}", entity.id);
            vec![base, typed, single]
        } else {
            self.channels
                .iter()
                .map(|t| t.render(message))
                .collect::<Result<_, _>>()?
        };
        // `data` is passed through byte for byte, as from the server API.
        let data: Box<RawValue> = match &self.data {
            Some(path) => path.find_raw(raw).map_or_else(
                || RawValue::from_string("null".to_owned()),
                |value| RawValue::from_string(value.get().to_owned()),
            ),
            None => RawValue::from_string(raw.trim().to_owned()),
        }
        .map_err(|e| e.to_string())?;
        let audience = match &self.audience {
            Some(path) => match path.find(message) {
                Some(value) => Some(
                    Audience::deserialize(value)
                        .map_err(|e| format!("field `{}` is not an audience: {e}", path.text()))?,
                ),
                None => None,
            },
            None => None,
        };
        let actor = optional_scalar(self.actor.as_ref(), message)?;
        let correlation_id = optional_scalar(self.correlation_id.as_ref(), message)?;
        let meta = (actor.is_some() || correlation_id.is_some() || entity.is_some()).then_some(
            EventMeta {
                actor,
                correlation_id,
                entity,
            },
        );
        Ok(BroadcastRequest {
            channels,
            event,
            data,
            meta,
            audience,
            exclude_client: None,
            idempotency_key: Some(id),
        })
    }

    fn version(&self, message: &Value) -> Result<Option<i64>, String> {
        let Some(path) = &self.entity_version else {
            return Ok(None);
        };
        match path.find(message) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("field `{}` must be a whole number", path.text())),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("field `{}` must be a whole number", path.text())),
            Some(_) => Err(format!("field `{}` must be a whole number", path.text())),
        }
    }
}

/// A dead-letter reason for what the publish path refuses: its error code
/// and message, as the server API answers them.
pub(super) fn refusal(error: &crate::publisher::PublishError) -> String {
    format!("{}: {error}", error.code().as_str())
}

/// Turns messages of one consumer into publish actions.
#[derive(Debug, Clone)]
pub struct MessageReader {
    mapping: Option<Mapping>,
    events: Vec<String>,
    max_size: usize,
    max_broadcast_channels: usize,
}

/// Command mode's envelope.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    method: String,
    payload: Box<RawValue>,
}

impl MessageReader {
    /// A reader for `config` (validated), with the server API's limits.
    pub fn new(config: &ConsumerConfig, api: &ApiSettings) -> Result<Self, String> {
        let mapping = match (config.mode, &config.mapping) {
            (MessageMode::Mapping, Some(mapping)) => Some(Mapping::new(mapping)?),
            (MessageMode::Mapping, None) => return Err("mode = \"mapping\" needs a mapping".into()),
            (MessageMode::Command, _) => None,
        };
        Ok(Self {
            mapping,
            events: config.events.clone(),
            max_size: api.max_body_size,
            max_broadcast_channels: api.max_broadcast_channels,
        })
    }

    fn wanted(&self, event: &str) -> bool {
        self.events.is_empty()
            || self
                .events
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => event.starts_with(prefix),
                    None => event == pattern,
                })
    }

    /// The action of `message`. `source_id` (stream entry or row id) is the
    /// idempotency key of a command that brings none. The error is the reason
    /// for the dead-letter.
    pub fn read(&self, message: &[u8], source_id: &str) -> Result<PublishAction, String> {
        if message.len() > self.max_size {
            return Err(format!(
                "message of {} bytes exceeds api.max_body_size ({})",
                message.len(),
                self.max_size
            ));
        }
        match &self.mapping {
            Some(mapping) => {
                let value: Value =
                    serde_json::from_slice(message).map_err(|e| format!("invalid JSON: {e}"))?;
                // Valid JSON is valid UTF-8.
                let raw = std::str::from_utf8(message).map_err(|e| format!("invalid JSON: {e}"))?;
                if !value.is_object() {
                    return Err("the message is not a JSON object".into());
                }
                // Filter first: an event this consumer does not publish is
                // skipped even when it lacks the mapped fields.
                if let Ok(event) = scalar(&mapping.event, &value) {
                    if !self.wanted(&event) {
                        return Ok(PublishAction::Skip);
                    }
                }
                let request = mapping.apply(&value, raw)?;
                request
                    .check_channel_count(self.max_broadcast_channels)
                    .map_err(|e| refusal(&e))?;
                Ok(PublishAction::Broadcast(request))
            }
            None => self.command(message, source_id),
        }
    }

    fn command(&self, message: &[u8], source_id: &str) -> Result<PublishAction, String> {
        let command: Command = parse_request(message).map_err(|e| e.to_string())?;
        let payload = command.payload.get().as_bytes();
        let key = || Some(source_id.to_owned());
        let action = match command.method.as_str() {
            "publish" => {
                let mut request: PublishRequest =
                    parse_request(payload).map_err(|e| e.to_string())?;
                request.idempotency_key = request.idempotency_key.or_else(key);
                if !self.wanted(&request.event) {
                    return Ok(PublishAction::Skip);
                }
                PublishAction::Publish(request)
            }
            "broadcast" => {
                let mut request: BroadcastRequest =
                    parse_request(payload).map_err(|e| e.to_string())?;
                request
                    .check_channel_count(self.max_broadcast_channels)
                    .map_err(|e| refusal(&e))?;
                request.idempotency_key = request.idempotency_key.or_else(key);
                if !self.wanted(&request.event) {
                    return Ok(PublishAction::Skip);
                }
                PublishAction::Broadcast(request)
            }
            "events" => {
                let mut change: EntityChange = parse_request(payload).map_err(|e| e.to_string())?;
                change.idempotency_key = change.idempotency_key.or_else(key);
                if !self.wanted(&change.event_name()) {
                    return Ok(PublishAction::Skip);
                }
                PublishAction::EntityChange(change)
            }
            other => {
                return Err(format!(
                    "unknown method `{other}`: expected publish, broadcast or events"
                ))
            }
        };
        Ok(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping_reader(channels: &[&str]) -> MessageReader {
        let config = ConsumerConfig {
            name: "bus".into(),
            mode: MessageMode::Mapping,
            events: vec!["approval.*".into()],
            mapping: Some(MappingConfig {
                id: "id".into(),
                event: "type".into(),
                channels: channels.iter().map(|c| (*c).to_owned()).collect(),
                data: Some("data".into()),
                workspace: Some("tenantId".into()),
                entity_type: Some("data.entityType".into()),
                entity_id: Some("data.id".into()),
                entity_version: Some("version".into()),
                actor: Some("userId".into()),
                correlation_id: Some("correlationId".into()),
                audience: None,
            }),
            ..ConsumerConfig::default()
        };
        MessageReader::new(&config, &ApiSettings::default()).unwrap()
    }

    const EVENT: &str = r#"{"id":"e1","type":"approval.granted","source":"s","timestamp":"t",
        "correlationId":"c1","tenantId":"acme","userId":"u1","version":3,
        "data":{"entityType":"invoice","id":"42","amount":5}}"#;

    #[test]
    fn mapping_renders_channels_and_meta() {
        let reader = mapping_reader(&[
            "workspace:{tenantId}",
            "workspace:{tenantId}:{data.entityType}:{data.id}",
        ]);
        let PublishAction::Broadcast(request) = reader.read(EVENT.as_bytes(), "x").unwrap() else {
            panic!("not a broadcast");
        };
        assert_eq!(
            request.channels,
            ["workspace:acme", "workspace:acme:invoice:42"]
        );
        assert_eq!(request.event, "approval.granted");
        assert_eq!(request.idempotency_key.as_deref(), Some("e1"));
        let meta = request.meta.unwrap();
        assert_eq!(meta.actor.as_deref(), Some("u1"));
        assert_eq!(meta.entity.unwrap().version, Some(3));
        assert_eq!(
            request.data.get(),
            r#"{"entityType":"invoice","id":"42","amount":5}"#
        );
    }

    #[test]
    fn mapping_passes_data_through_byte_for_byte() {
        let reader = mapping_reader(&["workspace:{tenantId}"]);
        let data = r#"{"entityType": "invoice", "id": "42", "a": 1.0e2, "s": "\u00e9", "big": 12345678901234567890123}"#;
        let message =
            format!(r#"{{"id":"e1","type":"approval.granted","tenantId":"acme","data": {data} }}"#);
        let PublishAction::Broadcast(request) = reader.read(message.as_bytes(), "x").unwrap()
        else {
            panic!("not a broadcast");
        };
        assert_eq!(request.data.get(), data);
        // The last of a repeated key, as the mapped fields read it.
        let message =
            r#"{"id":"e1","type":"approval.granted","tenantId":"acme","data":1,"data":[2]}"#;
        let PublishAction::Broadcast(request) = reader.read(message.as_bytes(), "x").unwrap()
        else {
            panic!("not a broadcast");
        };
        assert_eq!(request.data.get(), "[2]");
        // Without a `data` path, the whole message is the payload, as sent.
        let mut config = mapping_reader(&[]);
        if let Some(mapping) = config.mapping.as_mut() {
            mapping.data = None;
        }
        let message = "  {\"id\":\"e1\", \"type\":\"approval.granted\",\"tenantId\":\"acme\",\n \"data\":{\"entityType\":\"i\",\"id\":\"1\"}}\n";
        let PublishAction::Broadcast(request) = config.read(message.as_bytes(), "x").unwrap()
        else {
            panic!("not a broadcast");
        };
        assert_eq!(request.data.get(), message.trim());
    }

    #[test]
    fn refusals_carry_the_error_code_of_the_publish_path() {
        let mut reader = mapping_reader(&[]);
        let message = r#"{"id":"e1","type":"approval.granted","tenantId":"acme","data":{"entityType":"a:b","id":"1"}}"#;
        assert_eq!(
            reader.read(message.as_bytes(), "x").unwrap_err(),
            "bad_request: entity type must be non-empty and contain no ':'"
        );
        reader.max_broadcast_channels = 2;
        let message = r#"{"id":"e1","type":"approval.granted","tenantId":"acme","data":{"entityType":"a","id":"1"}}"#;
        assert_eq!(
            reader.read(message.as_bytes(), "x").unwrap_err(),
            "limit_exceeded: at most 2 channels per broadcast"
        );
    }

    #[test]
    fn mapping_without_templates_uses_entity_channels() {
        let reader = mapping_reader(&[]);
        let PublishAction::Broadcast(request) = reader.read(EVENT.as_bytes(), "x").unwrap() else {
            panic!("not a broadcast");
        };
        assert_eq!(
            request.channels,
            [
                "workspace:acme",
                "workspace:acme:invoice",
                "workspace:acme:invoice:42"
            ]
        );
    }

    #[test]
    fn missing_fields_and_filtered_events() {
        let reader = mapping_reader(&["workspace:{tenantId}"]);
        let err = reader
            .read(br#"{"id":"e1","type":"approval.x","data":{}}"#, "x")
            .unwrap_err();
        assert_eq!(err, "missing field `tenantId`");
        let skipped = reader
            .read(br#"{"id":"e1","type":"invoice.paid"}"#, "x")
            .unwrap();
        assert!(matches!(skipped, PublishAction::Skip));
    }

    #[test]
    fn templates_are_checked() {
        assert!(ChannelTemplate::parse("workspace:{tenantId").is_err());
        assert!(ChannelTemplate::parse("workspace:}").is_err());
        assert!(ChannelTemplate::parse("workspace:{a..b}").is_err());
        let t = ChannelTemplate::parse("{scope}:{tenantId}").unwrap();
        assert_eq!(t.literal_namespace(), None);
        let t = ChannelTemplate::parse("audit:{tenantId}").unwrap();
        assert_eq!(t.literal_namespace(), Some("audit"));
    }

    #[test]
    fn commands_parse_like_the_api() {
        let config = ConsumerConfig {
            name: "bus".into(),
            ..ConsumerConfig::default()
        };
        let reader = MessageReader::new(&config, &ApiSettings::default()).unwrap();
        let ok =
            br#"{"method":"publish","payload":{"channel":"workspace:a","event":"x","data":1}}"#;
        let PublishAction::Publish(request) = reader.read(ok, "stream:1-0").unwrap() else {
            panic!("not a publish");
        };
        assert_eq!(request.idempotency_key.as_deref(), Some("stream:1-0"));
        let unknown =
            br#"{"method":"publish","payload":{"channel":"a","event":"x","data":1,"extra":1}}"#;
        assert!(reader
            .read(unknown, "s")
            .unwrap_err()
            .contains("unknown field"));
        assert!(reader.read(b"not json", "s").is_err());
        assert!(reader
            .read(br#"{"method":"nope","payload":{}}"#, "s")
            .unwrap_err()
            .contains("unknown method"));
    }
}
