use super::*;
use std::time::Duration;
use tokio::io::duplex;

fn rect_header(rect: Rect, encoding: u32) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 1];
    for value in [rect.x, rect.y, rect.width, rect.height] {
        bytes.extend(value.to_be_bytes());
    }
    bytes.extend(encoding.to_be_bytes());
    bytes
}

#[tokio::test]
async fn oversized_initialization_is_rejected_before_payload_reads() {
    for (width, height, length) in [
        (u16::MAX, 1, 0),
        (8192, 8192, 0),
        (0, 1, 0),
        (10, 10, u32::MAX),
    ] {
        let (mut client, mut server) = duplex(256);
        server.write_u16(width).await.unwrap();
        server.write_u16(height).await.unwrap();
        server
            .write_all(&Vec::<u8>::from(PixelFormat::rgba()))
            .await
            .unwrap();
        server.write_u32(length).await.unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(1),
            read_server_init(&mut client, &mut Some(PixelFormat::rgba()), &|_| async {
                Ok(())
            }),
        )
        .await
        .unwrap();
        assert!(result.is_err());
    }
}

#[tokio::test]
async fn invalid_rectangles_and_lengths_are_rejected_before_payload_reads() {
    let rect = Rect {
        x: 0,
        y: 0,
        width: 1,
        height: 1,
    };
    let mut copy = rect_header(rect, VncEncoding::CopyRect.into());
    copy.extend([0, 64, 0, 0]);
    let mut zrle = rect_header(rect, VncEncoding::Zrle.into());
    zrle.extend(u32::MAX.to_be_bytes());
    let mut clipboard = vec![3, 0, 0, 0];
    clipboard.extend(u32::MAX.to_be_bytes());
    for payload in [
        rect_header(rect, 12345),
        rect_header(rect, VncEncoding::Tight.into()), // not negotiated
        rect_header(Rect { x: 64, ..rect }, 0),
        rect_header(
            Rect {
                x: u16::MAX,
                ..rect
            },
            0,
        ),
        rect_header(
            Rect {
                width: u16::MAX,
                ..rect
            },
            VncEncoding::DesktopSizePseudo.into(),
        ),
        copy,
        zrle,
        clipboard,
        vec![1],
    ] {
        let (mut client, mut server) = duplex(256);
        server.write_all(&payload).await.unwrap();
        let (_stop, mut stopped) = oneshot::channel();
        let result = tokio::time::timeout(
            Duration::from_secs(1),
            asycn_vnc_read_loop(
                &mut client,
                &PixelFormat::rgba(),
                &|_| async { Ok(()) },
                &mut stopped,
                &[
                    VncEncoding::Raw,
                    VncEncoding::CopyRect,
                    VncEncoding::Zrle,
                    VncEncoding::DesktopSizePseudo,
                ],
                &AtomicU32::new(pack_screen((64, 64))),
                &DesktopState::default(),
            ),
        )
        .await
        .unwrap();
        assert!(result.is_err());
    }
}

#[tokio::test]
async fn raw_is_implicit_and_resize_changes_decoder_bounds() {
    let mut bytes = rect_header(
        Rect {
            x: 0,
            y: 0,
            width: 128,
            height: 96,
        },
        VncEncoding::DesktopSizePseudo.into(),
    );
    bytes.extend(rect_header(
        Rect {
            x: 127,
            y: 95,
            width: 1,
            height: 1,
        },
        0,
    ));
    bytes.extend([1, 2, 3, 255]);
    let output = std::sync::Mutex::new(Vec::new());
    let (_stop, mut stopped) = oneshot::channel();
    let result = asycn_vnc_read_loop(
        &mut bytes.as_slice(),
        &PixelFormat::rgba(),
        &|event| {
            output.lock().unwrap().push(event);
            async { Ok(()) }
        },
        &mut stopped,
        &[VncEncoding::DesktopSizePseudo],
        &AtomicU32::new(pack_screen((64, 64))),
        &DesktopState::default(),
    )
    .await;
    assert!(matches!(result, Err(VncError::IoError(_))));
    let output = output.into_inner().unwrap();
    // Two FramebufferUpdate messages of one rectangle each: each ends with UpdateEnd.
    assert_eq!(output.len(), 4, "{output:?}");
    assert!(
        matches!(&output[0], VncEvent::SetResolution(size) if (size.width, size.height) == (128, 96))
    );
    assert!(matches!(&output[1], VncEvent::UpdateEnd));
    assert!(
        matches!(&output[2], VncEvent::RawImage(rect, bytes) if (rect.x, rect.y) == (127, 95) && bytes == &[1, 2, 3, 255])
    );
    assert!(matches!(&output[3], VncEvent::UpdateEnd));
}

#[tokio::test]
async fn update_end_follows_every_rectangle_of_an_update() {
    // One FramebufferUpdate of three rectangles, one that ends early with LastRect, one with
    // none: UpdateEnd comes once after each, never between the rectangles of one.
    let rect = |x: u16| Rect {
        x,
        y: 0,
        width: 1,
        height: 1,
    };
    let header = |count: u16| {
        let mut bytes = vec![0, 0];
        bytes.extend(count.to_be_bytes());
        bytes
    };
    let body = |x: u16, encoding: u32| {
        let mut bytes = rect_header(rect(x), encoding)[4..].to_vec();
        if encoding == 0 {
            bytes.extend([x as u8, 0, 0, 255]);
        }
        bytes
    };
    let mut bytes = header(3);
    for x in 0..3 {
        bytes.extend(body(x, 0));
    }
    bytes.extend(header(0xffff));
    bytes.extend(body(5, 0));
    bytes.extend(body(0, VncEncoding::LastRectPseudo.into()));
    bytes.extend(header(0));
    let output = std::sync::Mutex::new(Vec::new());
    let (_stop, mut stopped) = oneshot::channel();
    let result = asycn_vnc_read_loop(
        &mut bytes.as_slice(),
        &PixelFormat::rgba(),
        &|event| {
            output.lock().unwrap().push(event);
            async { Ok(()) }
        },
        &mut stopped,
        &[VncEncoding::LastRectPseudo],
        &AtomicU32::new(pack_screen((64, 64))),
        &DesktopState::default(),
    )
    .await;
    assert!(matches!(result, Err(VncError::IoError(_))));
    let seen: Vec<String> = output
        .into_inner()
        .unwrap()
        .iter()
        .map(|event| match event {
            VncEvent::RawImage(rect, _) => format!("raw {}", rect.x),
            VncEvent::UpdateEnd => "end".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        ["raw 0", "raw 1", "raw 2", "end", "raw 5", "end", "end"]
    );
}

#[tokio::test]
async fn shutdown_interrupts_a_full_event_queue() {
    let (events, mut received) = channel(OUTPUT_CHANNEL_SIZE);
    for _ in 0..OUTPUT_CHANNEL_SIZE {
        events.try_send(VncEvent::Bell).unwrap();
    }
    let calls = std::cell::Cell::new(0);
    let output = |event| {
        calls.set(calls.get() + 1);
        events.send(event)
    };
    let (stop, mut stopped) = oneshot::channel();
    let mut input = &[2_u8][..];
    let format = PixelFormat::rgba();
    let deliver = |event| {
        let send = output(event);
        async {
            send.await?;
            Ok(())
        }
    };
    let screen = AtomicU32::new(pack_screen((1, 1)));
    let desktop = DesktopState::default();
    let task = asycn_vnc_read_loop(
        &mut input,
        &format,
        &deliver,
        &mut stopped,
        &[],
        &screen,
        &desktop,
    );
    tokio::pin!(task);
    assert!(futures::poll!(task.as_mut()).is_pending());
    assert_eq!(calls.get(), 1);
    assert_eq!(events.capacity(), 0);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..OUTPUT_CHANNEL_SIZE {
        assert!(matches!(received.try_recv(), Ok(VncEvent::Bell)));
    }
    assert!(received.try_recv().is_err());
}

#[tokio::test]
async fn a_waiting_consumer_leaves_the_server_bytes_in_the_socket() {
    // 1024x768 Raw updates of 3 MiB each; nobody takes events. The decoder fills the output
    // queue, then reads one more update's pixels and waits to hand them over: past that the
    // client reads nothing, so the server's writes wait (here: in the duplex pipe; on TCP: in
    // the kernel) instead of piling up in the client.
    let (stream, mut server) = duplex(64 * 1024);
    let (width, height) = (1024_u16, 768_u16);
    let (client, ()) = tokio::join!(
        super::resize_tests::connect(stream),
        super::resize_tests::handshake(&mut server, (width, height))
    );
    let update = {
        let mut bytes = rect_header(
            Rect {
                x: 0,
                y: 0,
                width,
                height,
            },
            0,
        );
        bytes.resize(
            bytes.len() + usize::from(width) * usize::from(height) * 4,
            0x5a,
        );
        bytes
    };
    // The first update's pixels take the output queue's second slot (SetResolution from the
    // handshake holds the first) and the decoder waits to hand over its UpdateEnd; the second
    // update then finds no reader.
    let written = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&written);
    let server = tokio::spawn(async move {
        for _ in 0..4 {
            server.write_all(&update).await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
        server
    });
    // One update goes through however slow the machine; then nothing more does.
    tokio::time::timeout(Duration::from_secs(10), async {
        while written.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        written.load(Ordering::SeqCst),
        1,
        "the client read ahead of its consumer"
    );
    // The consumer catches up: every update arrives whole and in order.
    assert!(matches!(
        client.recv_event().await.unwrap(),
        VncEvent::SetResolution(_)
    ));
    for _ in 0..4 {
        let event = tokio::time::timeout(Duration::from_secs(5), client.recv_event()).await;
        let Ok(Ok(VncEvent::RawImage(rect, pixels))) = event else {
            panic!("expected a Raw image, got {event:?}");
        };
        assert_eq!((rect.width, rect.height), (width, height));
        assert!(pixels.len() == 1024 * 768 * 4 && pixels.iter().all(|&b| b == 0x5a));
        assert!(matches!(
            client.recv_event().await.unwrap(),
            VncEvent::UpdateEnd
        ));
    }
    let _server = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(written.load(Ordering::SeqCst), 4);
    client.close().await.unwrap();
}

#[tokio::test]
async fn shutdown_interrupts_a_blocked_socket_write() {
    let (client, mut server) = duplex(1);
    let (reader, writer) = tokio::io::split(client);
    let (input, input_rx) = channel(INPUT_CHANNEL_SIZE);
    let (_reader_done, reader_running) = oneshot::channel();
    let (stop, stopped) = oneshot::channel();
    input
        .send(ClientMsg::ClientCutText("test".into()))
        .await
        .unwrap();
    let task = async_connection_write_loop(writer, input_rx, stopped, reader_running);
    tokio::pin!(task);
    assert!(futures::poll!(task.as_mut()).is_pending());
    assert_eq!(input.capacity(), INPUT_CHANNEL_SIZE);
    assert_eq!(server.read_u8().await.unwrap(), 6); // first byte of ClientCutText
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
    drop(reader);
    assert_eq!(server.read(&mut [0]).await.unwrap(), 0);
}

#[tokio::test]
async fn decoder_exit_releases_an_idle_socket() {
    let (client, mut server) = duplex(1);
    let (reader, writer) = tokio::io::split(client);
    let (_input, input) = channel(INPUT_CHANNEL_SIZE);
    let (reader_done, reader_running) = oneshot::channel::<()>();
    let (_stop, stopped) = oneshot::channel();
    let task = async_connection_write_loop(writer, input, stopped, reader_running);
    tokio::pin!(task);
    assert!(futures::poll!(task.as_mut()).is_pending());
    // What the decoder does when it stops: drop its half, then its end of `reader_done`.
    drop(reader);
    drop(reader_done);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.read(&mut [0]).await.unwrap(), 0);
}

#[tokio::test]
async fn full_input_queue_does_not_hold_the_client_lock_during_close() {
    let (input_ch, mut input) = channel(INPUT_CHANNEL_SIZE);
    for _ in 0..INPUT_CHANNEL_SIZE {
        input_ch
            .try_send(ClientMsg::ClientCutText(String::new()))
            .unwrap();
    }
    let (_events, output_ch) = channel(OUTPUT_CHANNEL_SIZE);
    let (network_stop, network_stopped) = oneshot::channel();
    let (decoder_stop, decoder_stopped) = oneshot::channel();
    let desktop = Arc::new(DesktopState::default());
    let client = VncClient {
        desktop: Arc::clone(&desktop),
        input_ch: input_ch.clone(),
        inner: Arc::new(Mutex::new(VncInner {
            name: String::new(),
            screen: Arc::new(AtomicU32::new(pack_screen((1, 1)))),
            desktop,
            input_ch,
            output_ch,
            decoding_stop: Some(decoder_stop),
            net_conn_stop: Some(network_stop),
            closed: false,
        })),
    };
    let pending = client.input(X11Event::Refresh);
    tokio::pin!(pending);
    assert!(futures::poll!(pending.as_mut()).is_pending());
    tokio::time::timeout(Duration::from_secs(1), client.close())
        .await
        .unwrap()
        .unwrap();
    network_stopped.await.unwrap();
    decoder_stopped.await.unwrap();
    // Even if capacity becomes available during close, no stale input is queued.
    input.recv().await.unwrap();
    assert!(matches!(pending.await, Err(VncError::ClientNotRunning)));
    assert_eq!(input.len(), INPUT_CHANNEL_SIZE - 1);
}
