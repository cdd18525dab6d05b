//! Property-based fuzzing of Phoenix v2 frame decoding (`sync_gateway::protocol`): arbitrary
//! text never panics and is refused with the precise [`FrameError`]; encode → decode returns the
//! frame; `sync:subscribe` payloads and the `sync:frame` envelope decode without panics; and a
//! real `Session`, fed arbitrary frames over channels, answers each with a well-formed frame whose
//! error code is a documented one, and stays alive.
//!
//! Seeded and bounded (256 cases per property, 64 sessions); `PROPTEST_CASES` /
//! `PROPTEST_RNG_SEED` run longer or elsewhere (docs/fuzzing.md).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Value};
use sync_gateway::auth::mint::{mint, MintRequest};
use sync_gateway::auth::{AuthConfig, KeySet, Revocations, Verifier};
use sync_gateway::connection::InboundError;
use sync_gateway::protocol::{
    ErrorCode, FrameKind, KhalaFrame, ResumeAfter, SubscribeRequest, CHANNEL_TOPIC, PHOENIX_TOPIC,
};
use sync_gateway::protocol::{Frame, FrameError};
use sync_gateway::session::Session;
use sync_gateway::source::MemorySource;
use sync_gateway::{Gateway, GatewayConfig};
use tokio_util::sync::CancellationToken;

/// The seed of the normal test run; `PROPTEST_RNG_SEED` replaces it.
const SEED: u64 = 0x0a0f_0223;

/// 256 cases (or `PROPTEST_CASES`) from a fixed seed (or `PROPTEST_RNG_SEED`).
fn config() -> ProptestConfig {
    let defaults = ProptestConfig::default();
    ProptestConfig {
        rng_seed: match defaults.rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            fixed => fixed,
        },
        ..defaults
    }
}

/// Any JSON value whose text round-trips exactly (floats are dyadic, so they print and parse
/// back to the same `f64`).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1_000_000i32..1_000_000).prop_map(|n| json!(f64::from(n) / 8.0)),
        "(?s).{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("(?s).{0,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What `Frame::parse` must return for `value`, computed independently of it.
fn expected_parse(value: &Value) -> Result<Frame, FrameError> {
    let Value::Array(items) = value else {
        return Err(FrameError::NotArray);
    };
    if items.len() != 5 {
        return Err(FrameError::Arity(items.len()));
    }
    let reference = |v: &Value, name| match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(FrameError::BadRef(name)),
    };
    let join_ref = reference(&items[0], "join_ref")?;
    let msg_ref = reference(&items[1], "ref")?;
    let topic = items[2]
        .as_str()
        .ok_or(FrameError::BadString("topic"))?
        .to_owned();
    let event = items[3]
        .as_str()
        .ok_or(FrameError::BadString("event"))?
        .to_owned();
    Ok(Frame {
        join_ref,
        msg_ref,
        topic,
        event,
        payload: items[4].clone(),
    })
}

/// The events and topics a client may name, plus junk.
fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(CHANNEL_TOPIC.to_owned()),
        1 => prop::sample::select(vec![CHANNEL_TOPIC, PHOENIX_TOPIC, "sync:v2", ""]).prop_map(str::to_owned),
        1 => "(?s).{0,10}",
    ]
}

fn event() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "phx_join",
            "phx_leave",
            "heartbeat",
            "sync:subscribe",
            "sync:unsubscribe",
            "sync:heartbeat",
            "phx_reply",
        ])
        .prop_map(str::to_owned),
        "(?s).{0,10}",
    ]
}

/// `sync:subscribe`-like payloads: known and unknown topics, `resume_after` maps and lists with
/// hostile watermarks, any `replay_batch_size`, unknown fields.
fn subscribe_payload() -> impl Strategy<Value = Value> {
    let topic_name = prop_oneof![
        prop::sample::select(vec![
            "runtime.run_summaries",
            "runtime.codex_worker_events",
            "nope"
        ])
        .prop_map(str::to_owned),
        "(?s).{0,8}",
    ];
    (
        prop::collection::vec(topic_name.clone(), 0..4),
        proptest::option::of(prop_oneof![
            prop::collection::btree_map(topic_name.clone(), json_value(), 0..3)
                .prop_map(|m| json!(m)),
            prop::collection::vec((topic_name, json_value()), 0..3).prop_map(|pairs| {
                json!(pairs
                    .into_iter()
                    .map(|(topic, watermark)| json!({ "topic": topic, "watermark": watermark }))
                    .collect::<Vec<_>>())
            }),
            json_value(),
        ]),
        proptest::option::of(prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            (-2i64..3000).prop_map(|n| json!(n)),
            json_value()
        ]),
        proptest::option::weighted(0.2, json_value()),
    )
        .prop_map(|(topics, resume_after, batch, junk)| {
            let mut payload = json!({ "topics": topics });
            if let Some(resume_after) = resume_after {
                payload["resume_after"] = resume_after;
            }
            if let Some(batch) = batch {
                payload["replay_batch_size"] = batch;
            }
            if let Some(junk) = junk {
                payload["junk"] = junk;
            }
            payload
        })
}

/// One inbound text frame: garbage, any JSON, any array, or a well-typed frame with hostile parts.
fn inbound_text() -> impl Strategy<Value = String> {
    let reference = prop_oneof![
        Just(Value::Null),
        Just(json!("1")),
        Just(json!(2)),
        json_value(),
    ];
    prop_oneof![
        1 => "(?s).{0,64}",
        1 => json_value().prop_map(|v| v.to_string()),
        1 => prop::collection::vec(json_value(), 0..7).prop_map(|v| json!(v).to_string()),
        4 => (
            reference.clone(),
            reference,
            topic(),
            event(),
            prop_oneof![json_value(), subscribe_payload(), Just(json!({}))],
        )
            .prop_map(|(join_ref, msg_ref, topic, event, payload)| {
                json!([join_ref, msg_ref, topic, event, payload]).to_string()
            }),
        3 => (
            prop::sample::select(vec!["sync:subscribe", "sync:unsubscribe"]),
            subscribe_payload(),
        )
            .prop_map(|(event, payload)| json!(["1", "9", CHANNEL_TOPIC, event, payload]).to_string()),
    ]
}

/// The error codes a client may meet (docs/khala-protocol.md), `internal` excepted: arbitrary
/// input is never a server failure.
fn assert_documented_error(response: &Value) -> Result<(), TestCaseError> {
    let code: ErrorCode = serde_json::from_value(response["code"].clone())
        .map_err(|e| TestCaseError::fail(format!("undocumented error {response}: {e}")))?;
    prop_assert_ne!(code, ErrorCode::Internal, "{}", response);
    prop_assert!(response["message"].is_string(), "{}", response);
    Ok(())
}

/// Checks one frame the session sent.
fn check_outbound(message: &Message) -> Result<(), TestCaseError> {
    let Message::Text(text) = message else {
        // A Close is allowed only with a documented code; the session must not close here.
        return Err(TestCaseError::fail(format!(
            "unexpected message {message:?}"
        )));
    };
    let frame = Frame::parse(text.as_str())
        .map_err(|e| TestCaseError::fail(format!("server sent a malformed frame {text}: {e}")))?;
    match frame.reply_parts() {
        Some(("ok", _)) => {}
        Some(("error", response)) => assert_documented_error(response)?,
        Some((status, _)) => prop_assert!(false, "reply status {status}"),
        None if frame.event == "sync:error" => assert_documented_error(&frame.payload)?,
        None => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_frame_parse_never_panics_on_arbitrary_text(text in "(?s).{0,200}") {
        match Frame::parse(&text) {
            Ok(frame) => prop_assert_eq!(
                Ok(frame),
                expected_parse(&serde_json::from_str(&text).expect("parsed frames are JSON"))
            ),
            Err(FrameError::Json(_)) => prop_assert!(serde_json::from_str::<Value>(&text).is_err()),
            Err(error) => prop_assert_eq!(
                Err(error),
                expected_parse(&serde_json::from_str(&text).expect("only JSON reaches the shape checks"))
            ),
        }
    }

    #[test]
    fn fuzz_frame_parse_returns_the_precise_error_for_any_json(
        value in prop_oneof![
            json_value(),
            prop::collection::vec(json_value(), 0..8).prop_map(Value::Array),
            (json_value(), json_value(), json_value(), json_value(), json_value())
                .prop_map(|(a, b, c, d, e)| json!([a, b, c, d, e])),
        ],
    ) {
        prop_assert_eq!(Frame::parse(&value.to_string()), expected_parse(&value));
    }

    #[test]
    fn fuzz_frame_encode_then_decode_returns_the_frame(
        join_ref in proptest::option::of("(?s).{0,12}"),
        msg_ref in proptest::option::of("(?s).{0,12}"),
        topic in "(?s).{0,16}",
        event in "(?s).{0,16}",
        payload in json_value(),
    ) {
        let frame = Frame { join_ref, msg_ref, topic, event, payload };
        prop_assert_eq!(Frame::parse(&frame.to_json()), Ok(frame.clone()));
        // A reply to it decodes too, and answers the same refs and topic.
        let reply = Frame::parse(&Frame::reply(&frame, "ok", json!({})).to_json()).expect("decodes");
        prop_assert_eq!(reply.join_ref, frame.join_ref);
        prop_assert_eq!(reply.msg_ref, frame.msg_ref);
        prop_assert_eq!(reply.topic, frame.topic);
    }

    #[test]
    fn fuzz_integer_refs_decode_as_their_decimal_text(join_ref in any::<i64>(), msg_ref in any::<u64>()) {
        let frame = Frame::parse(&json!([join_ref, msg_ref, "sync:v1", "phx_join", {}]).to_string())
            .expect("numeric refs are accepted");
        prop_assert_eq!(frame.join_ref, Some(join_ref.to_string()));
        prop_assert_eq!(frame.msg_ref, Some(msg_ref.to_string()));
    }

    #[test]
    fn fuzz_subscribe_payloads_decode_without_panics(payload in prop_oneof![subscribe_payload(), json_value()]) {
        if let Ok(request) = serde_json::from_value::<SubscribeRequest>(payload.clone()) {
            if let Some(resume) = &request.resume_after {
                match (resume, resume.pairs()) {
                    (ResumeAfter::List(items), Ok(pairs)) => prop_assert_eq!(pairs.len(), items.len()),
                    (ResumeAfter::Map(map), Ok(pairs)) => {
                        prop_assert_eq!(pairs.len(), map.len());
                        for (topic, watermark) in pairs {
                            prop_assert_eq!(map[&topic].as_u64(), Some(watermark));
                        }
                    }
                    (ResumeAfter::Map(map), Err(message)) => {
                        prop_assert!(map.values().any(|w| w.as_u64().is_none()), "{}", message);
                    }
                    (ResumeAfter::List(_), Err(message)) => prop_assert!(false, "{}", message),
                }
            }
        }
    }

    #[test]
    fn fuzz_khala_frame_envelopes_round_trip(
        topic in "(?s).{0,16}",
        seq in any::<u64>(),
        error in any::<bool>(),
        payload in prop::collection::vec(any::<u8>(), 0..128),
        garbage in "(?s).{0,32}",
    ) {
        let kind = if error { FrameKind::Error } else { FrameKind::UpdateBatch };
        let frame = KhalaFrame::new(&topic, seq, kind, &payload);
        prop_assert_eq!(frame.payload().expect("own base64"), payload);
        let text = serde_json::to_string(&frame).expect("serialises");
        prop_assert_eq!(serde_json::from_str::<KhalaFrame>(&text).expect("decodes"), frame.clone());
        // Arbitrary `payload_bytes` decode to an error, never a panic.
        let _ = KhalaFrame { payload_bytes: garbage, ..frame }.payload();
    }
}

/// A session over channels for `user:alice` reading `runtime.run_summaries`.
struct Harness {
    to_session: mpsc::Sender<Result<Message, InboundError>>,
    from_session: mpsc::Receiver<Message>,
    task: tokio::task::JoinHandle<()>,
}

fn start_session(gateway: &Gateway, verifier: &Verifier) -> Harness {
    let token = mint(
        verifier.config(),
        gateway.known_topics(),
        &MintRequest {
            subject: "user:alice".into(),
            scopes: vec!["runtime.run_summaries".into()],
            ..MintRequest::default()
        },
        verifier.now(),
    )
    .expect("mints")
    .token;
    let auth = verifier.verify(&token).expect("verifies");
    let (to_session, inbound) = mpsc::channel(16);
    let (outbound, from_session) = mpsc::channel(64);
    let task = tokio::spawn(Session::run(gateway.clone(), auth, outbound, inbound));
    Harness {
        to_session,
        from_session,
        task,
    }
}

async fn next(
    from_session: &mut mpsc::Receiver<Message>,
) -> Result<Option<Message>, TestCaseError> {
    tokio::time::timeout(Duration::from_secs(10), from_session.next())
        .await
        .map_err(|_| TestCaseError::fail("no frame from the session within 10 s"))
}

/// Sends every frame, each followed by a Phoenix heartbeat probe; checks every frame the session
/// sends back and that each probe is answered (the session survived the frame before it).
async fn drive(
    gateway: &Gateway,
    verifier: &Verifier,
    frames: Vec<String>,
) -> Result<(), TestCaseError> {
    let mut harness = start_session(gateway, verifier);
    for (i, text) in frames.iter().enumerate() {
        let probe_ref = format!("probe-{i}");
        for message in [
            Message::text(text.clone()),
            Message::text(json!([null, probe_ref, PHOENIX_TOPIC, "heartbeat", {}]).to_string()),
        ] {
            harness
                .to_session
                .send(Ok(message))
                .await
                .map_err(|_| TestCaseError::fail(format!("session ended after {text:?}")))?;
        }
        loop {
            let Some(message) = next(&mut harness.from_session).await? else {
                return Err(TestCaseError::fail(format!(
                    "session closed after {text:?}"
                )));
            };
            check_outbound(&message)?;
            if let Message::Text(reply) = &message {
                let reply = Frame::parse(reply.as_str()).expect("checked above");
                if reply.msg_ref.as_deref() == Some(probe_ref.as_str())
                    && reply.topic == PHOENIX_TOPIC
                {
                    prop_assert_eq!(reply.reply_parts().map(|(status, _)| status), Some("ok"));
                    break;
                }
            }
        }
    }
    // The client leaves: whatever is still queued is checked, then the session ends cleanly.
    let Harness {
        to_session,
        mut from_session,
        task,
    } = harness;
    drop(to_session);
    while let Some(message) = next(&mut from_session).await? {
        if !matches!(message, Message::Close(_)) {
            check_outbound(&message)?;
        }
    }
    task.await
        .map_err(|e| TestCaseError::fail(format!("the session task failed: {e}")))
}

#[test]
fn fuzz_a_session_answers_arbitrary_frames_with_documented_frames_and_survives() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shutdown = CancellationToken::new();
    let (gateway, verifier) = runtime.block_on(async {
        let verifier = Verifier::new(
            AuthConfig::new(
                KeySet::new()
                    .with_active_hs256("fuzz-k1", "fuzz-session-secret-0123456789")
                    .expect("valid key"),
            ),
            Revocations::in_memory(),
        );
        let source = Arc::new(MemorySource::new());
        let gateway = Gateway::start(
            GatewayConfig::default(),
            source,
            verifier.clone(),
            shutdown.clone(),
        );
        (gateway, verifier)
    });
    // Sessions are heavier than pure decoding: a quarter of the cases, each up to 12 frames.
    let mut settings = config();
    settings.cases = (settings.cases / 4).max(1);
    let mut runner = TestRunner::new(settings);
    // Half the sessions join first, so subscribe, unsubscribe and leave meet a joined channel.
    let frames = (any::<bool>(), prop::collection::vec(inbound_text(), 1..12)).prop_map(
        |(join, mut frames)| {
            if join {
                frames.insert(
                    0,
                    json!(["1", "1", CHANNEL_TOPIC, "phx_join", {}]).to_string(),
                );
            }
            frames
        },
    );
    let result = runner.run(&frames, |frames| {
        runtime.block_on(drive(&gateway, &verifier, frames))
    });
    shutdown.cancel();
    if let Err(error) = result {
        panic!("{error}");
    }
}
