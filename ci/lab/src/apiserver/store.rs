//! The API server's storage: every object as JSON, one global resourceVersion counter
//! (as etcd's revision), and a bounded history of changes from which watches resume.
//! A watch that asks for a version older than the history answers 410 Gone, exactly as
//! Kubernetes does once etcd has compacted that revision.

use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// How many changes a watch can resume from. Kubernetes keeps ~5 minutes of etcd
/// history; at the lab's rate of change this is several minutes too.
const HISTORY_LEN: usize = 20_000;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }
    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn conflict(resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        )
    }
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub revision: u64,
    pub kind: EventType,
    pub resource: &'static str,
    pub object: Value,
}

/// What a watch starts from: the changes still in history, and the live feed.
pub type WatchStart = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

type ObjectKey = (String, String); // (namespace, name); namespace is "" for cluster scope

struct Inner {
    revision: u64,
    objects: BTreeMap<&'static str, BTreeMap<ObjectKey, Value>>,
    history: VecDeque<Arc<Event>>,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}
pub fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or("")
}
pub fn revision_of(object: &Value) -> Option<u64> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
}

/// Now, in whole seconds as metav1.Time carries it. Truncated, not rounded, as Go's
/// RFC 3339 formatting does: a rounded time can lie half a second in the future, and a
/// heartbeat from the future once made the node controller see a live node as silent.
pub fn now_rfc3339() -> String {
    use k8s_openapi::jiff::{RoundMode, TimestampRound, Unit};
    k8s_openapi::jiff::Timestamp::now()
        .round(
            TimestampRound::new()
                .smallest(Unit::Second)
                .mode(RoundMode::Trunc),
        )
        .expect("truncating to seconds cannot overflow")
        .to_string()
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(65_536);
        Store {
            inner: Mutex::new(Inner {
                revision: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
            }),
            events,
        }
    }

    pub fn revision(&self) -> u64 {
        self.inner.lock().unwrap().revision
    }

    pub fn get(&self, resource: &'static str, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.inner.lock().unwrap();
        inner
            .objects
            .get(resource)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object of a resource (in one namespace when given), with the list's revision.
    pub fn list(&self, resource: &'static str, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.inner.lock().unwrap();
        let items = inner
            .objects
            .get(resource)
            .map(|objects| {
                objects
                    .iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, inner.revision)
    }

    fn commit(
        inner: &mut Inner,
        events: &broadcast::Sender<Arc<Event>>,
        kind: EventType,
        resource: &'static str,
        object: Value,
    ) {
        let event = Arc::new(Event {
            revision: inner.revision,
            kind,
            resource,
            object,
        });
        inner.history.push_back(event.clone());
        if inner.history.len() > HISTORY_LEN {
            inner.history.pop_front();
        }
        let _ = events.send(event);
    }

    /// Creates an object: fills uid, creationTimestamp, resourceVersion and a name from
    /// generateName; an existing name is 409 AlreadyExists.
    pub fn create(
        &self,
        resource: &'static str,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        if object["metadata"]["name"].as_str().unwrap_or("").is_empty() {
            let prefix = object["metadata"]["generateName"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if prefix.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name or metadata.generateName is required",
                ));
            }
            let suffix: String = uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(5)
                .collect();
            object["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
        }
        let name = name_of(&object).to_string();
        let key = (namespace.to_string(), name.clone());
        if inner
            .objects
            .get(resource)
            .is_some_and(|o| o.contains_key(&key))
        {
            let singular = resource
                .split('.')
                .next()
                .unwrap_or(resource)
                .trim_end_matches('s');
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{singular} \"{name}\" already exists"),
            ));
        }
        inner.revision += 1;
        let revision = inner.revision;
        let metadata = object["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        if !namespace.is_empty() {
            metadata.insert("namespace".into(), json!(namespace));
        }
        metadata.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        metadata.insert("resourceVersion".into(), json!(revision.to_string()));
        metadata.insert("creationTimestamp".into(), json!(now_rfc3339()));
        metadata.entry("generation").or_insert(json!(1));
        inner
            .objects
            .entry(resource)
            .or_default()
            .insert(key, object.clone());
        Self::commit(
            &mut inner,
            &self.events,
            EventType::Added,
            resource,
            object.clone(),
        );
        Ok(object)
    }

    /// Replaces an object. When the new object carries a resourceVersion it must be the
    /// current one (optimistic concurrency), otherwise 409 Conflict.
    pub fn replace(
        &self,
        resource: &'static str,
        namespace: &str,
        name: &str,
        object: Value,
    ) -> Result<Value, ApiError> {
        self.update(resource, namespace, name, |current| {
            if let Some(expected) = revision_of(&object) {
                if Some(expected) != revision_of(current) {
                    return Err(ApiError::conflict(resource, name));
                }
            }
            let keep = current["metadata"].clone();
            *current = object.clone();
            for field in ["uid", "creationTimestamp", "namespace", "name"] {
                if !keep[field].is_null() {
                    current["metadata"][field] = keep[field].clone();
                }
            }
            Ok(())
        })
    }

    /// Read-modify-write under the store's lock, for the lab's own controllers and for
    /// patches. A change that leaves the object as it was commits nothing.
    pub fn update(
        &self,
        resource: &'static str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        let key = (namespace.to_string(), name.to_string());
        let current = inner
            .objects
            .get(resource)
            .and_then(|o| o.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let mut next = current.clone();
        change(&mut next)?;
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if next == current {
            return Ok(current);
        }
        if next["spec"] != current["spec"] {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            next["metadata"]["generation"] = json!(generation);
        }
        inner.revision += 1;
        next["metadata"]["resourceVersion"] = json!(inner.revision.to_string());
        inner
            .objects
            .entry(resource)
            .or_default()
            .insert(key, next.clone());
        Self::commit(
            &mut inner,
            &self.events,
            EventType::Modified,
            resource,
            next.clone(),
        );
        Ok(next)
    }

    pub fn delete(
        &self,
        resource: &'static str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        let key = (namespace.to_string(), name.to_string());
        let mut object = inner
            .objects
            .get_mut(resource)
            .and_then(|o| o.remove(&key))
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        inner.revision += 1;
        object["metadata"]["resourceVersion"] = json!(inner.revision.to_string());
        Self::commit(
            &mut inner,
            &self.events,
            EventType::Deleted,
            resource,
            object.clone(),
        );
        Ok(object)
    }

    /// Changes after `since` still in history, and a live feed of what comes next.
    /// Subscribing under the lock means no change falls between the two.
    pub fn watch_since(&self, since: u64) -> Result<WatchStart, ApiError> {
        let inner = self.inner.lock().unwrap();
        let receiver = self.events.subscribe();
        let oldest_kept = inner
            .history
            .front()
            .map(|e| e.revision)
            .unwrap_or(inner.revision + 1);
        if since + 1 < oldest_kept && since < inner.revision && inner.history.len() >= HISTORY_LEN {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {since} ({})", oldest_kept - 1),
            ));
        }
        let replay = inner
            .history
            .iter()
            .filter(|e| e.revision > since)
            .cloned()
            .collect();
        Ok((replay, receiver))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_resource_version_is_a_conflict_and_history_replays_changes() {
        let store = Store::new();
        let lease = store
            .create(
                "leases",
                "ns",
                json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}),
            )
            .unwrap();
        let mut stale = lease.clone();
        store
            .update("leases", "ns", "l", |l| {
                l["spec"]["holderIdentity"] = json!("b");
                Ok(())
            })
            .unwrap();
        stale["spec"]["holderIdentity"] = json!("c");
        assert_eq!(
            store.replace("leases", "ns", "l", stale).unwrap_err().code,
            409
        );
        let (replay, _) = store.watch_since(revision_of(&lease).unwrap()).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].kind, EventType::Modified);
    }
}
