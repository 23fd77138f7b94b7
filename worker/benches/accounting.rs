//! Hot-path cost of usage accounting per request, measured in one run: reading usage
//! from the response (JSON body, OpenAI SSE with the injected usage stripped again,
//! Anthropic SSE), with and without handing the event to the reporter's queue.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use prometheus_client::metrics::counter::Counter;
use switchyard_worker::{
    account::{Outcome, Usage, UsageEvent, UsageScanner},
    report::ReportSink,
    UsageSink,
};

fn openai_stream() -> Vec<Bytes> {
    let mut v = vec![Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    )];
    for _ in 0..20 {
        v.push(Bytes::from_static(
            b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello \"},\"finish_reason\":null}],\"usage\":null}\n\n",
        ));
    }
    v.push(Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18,\"prompt_tokens_details\":{\"cached_tokens\":3},\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\ndata: [DONE]\n\n",
    ));
    v
}

fn anthropic_stream() -> Vec<Bytes> {
    let mut v = vec![Bytes::from_static(
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1,\"cache_read_input_tokens\":3}}}\n\n",
    )];
    for _ in 0..20 {
        v.push(Bytes::from_static(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hello \"}}\n\n",
        ));
    }
    v.push(Bytes::from_static(
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ));
    v
}

fn json_body() -> Bytes {
    Bytes::from_static(
        b"{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hello hello hello\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}",
    )
}

/// The mock's canned non-streaming reply (what the benchmark's requests get).
fn mock_body() -> Bytes {
    Bytes::from_static(
        b"{\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"message\":{\"content\":\"This is a canned reply from switchyard-mock, the scriptable upstream used by the Switchyard tests and benchmark. It is long enough that the response has a realistic size, and short enough that it costs nothing to send over loopback. Nothing in it matters except its size, which is close to what a short chat answer weighs.\",\"role\":\"assistant\"}}],\"created\":1796140827,\"id\":\"chatcmpl-mock\",\"model\":\"mock-model\",\"object\":\"chat.completion\",\"usage\":{\"completion_tokens\":48,\"completion_tokens_details\":{\"reasoning_tokens\":0},\"prompt_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":0},\"total_tokens\":60}}",
    )
}

fn event(u: Usage) -> UsageEvent {
    UsageEvent {
        ts_ms: 1,
        request_id: "0193a1b2-0000-7000-8000-000000000000".into(),
        key_id: "key-id".into(),
        key_name: "team-a".into(),
        team: None,
        model: "gpt-4o".into(),
        backend: "openai-main".into(),
        provider: "openai".into(),
        credential: "key-1".into(),
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        stream: true,
        retries: 0,
        latency_us: 1000,
        ttfb_us: 100,
        usage: u,
        cost_nano: Some(1_234_000),
        outcome: Outcome::Ok,
    }
}

fn scan(chunks: &[Bytes], sse: bool, strip: bool) -> Usage {
    let mut s = UsageScanner::new(sse, true);
    let mut s2 = switchyard_worker::strip::Stripper::new();
    for c in chunks {
        s.observe(c);
        if strip {
            std::hint::black_box(s2.feed(c.clone()));
        }
    }
    s.finish(true).unwrap()
}

fn bench(c: &mut Criterion) {
    let oa = openai_stream();
    let an = anthropic_stream();
    let body = [json_body()];
    let (sink, mut rx) = ReportSink::new(1 << 16, Counter::default());
    let mut g = c.benchmark_group("accounting");
    g.bench_function("json body: usage only", |b| b.iter(|| scan(&body, false, false)));
    let mock = [mock_body()];
    g.bench_function("mock reply (669 B): usage only", |b| {
        b.iter(|| scan(&mock, false, false))
    });
    g.bench_function("json body: usage + report", |b| {
        b.iter(|| {
            sink.record(event(scan(&body, false, false)));
            rx.drain().pop().unwrap()
        })
    });
    g.bench_function("openai sse (22 chunks): usage only", |b| {
        b.iter(|| scan(&oa, true, false))
    });
    g.bench_function("openai sse (22 chunks): usage + strip", |b| {
        b.iter(|| scan(&oa, true, true))
    });
    g.bench_function("openai sse (22 chunks): usage + strip + report", |b| {
        b.iter(|| {
            sink.record(event(scan(&oa, true, true)));
            rx.drain().pop().unwrap()
        })
    });
    g.bench_function("anthropic sse (22 chunks): usage only", |b| {
        b.iter(|| scan(&an, true, false))
    });
    g.bench_function("anthropic sse (22 chunks): usage + report", |b| {
        b.iter(|| {
            sink.record(event(scan(&an, true, false)));
            rx.drain().pop().unwrap()
        })
    });
    g.bench_function("report only (event build + queue + drain)", |b| {
        b.iter(|| {
            sink.record(event(Usage::default()));
            rx.drain().pop().unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
