import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.Executors;
import java.util.concurrent.Flow;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import javax.net.ssl.SSLContext;

/**
 * h2guard bench's java.net.http driver: one HttpClient (HTTP_2, an SSLContext that trusts only
 * the spec's CA, built from a real KeyStore so that ALPN and hostname checks stay on: a
 * trust-all context makes the client fall back to HTTP/1.1 silently), requests sent with
 * {@code client.send} from a fixed pool of {@code concurrency} threads. No retries of our own.
 *
 * <p>{@code HttpRequest.timeout} ends when the response headers arrive, so a body that stalls
 * would hang a worker: a watchdog interrupts {@code send} {@link #GRACE_MS} after the spec's
 * timeout, reported as a driver timeout. The library's own timeout fires first whenever the
 * headers are what is late.
 */
public final class JavaDriver {
    static final long GRACE_MS = 250;

    private JavaDriver() {}

    /** Counts the body's bytes without holding them (a 1 GiB /bytes costs nothing). */
    static final class Counter implements Flow.Subscriber<List<ByteBuffer>> {
        final AtomicLong bytes = new AtomicLong();

        @Override
        public void onSubscribe(Flow.Subscription subscription) {
            subscription.request(Long.MAX_VALUE);
        }

        @Override
        public void onNext(List<ByteBuffer> items) {
            long n = 0;
            for (ByteBuffer b : items) {
                n += b.remaining();
            }
            bytes.addAndGet(n);
        }

        @Override
        public void onError(Throwable throwable) {}

        @Override
        public void onComplete() {}
    }

    static String protocol(HttpClient.Version v) {
        return v == HttpClient.Version.HTTP_2 ? "h2" : "http/1.1";
    }

    static DriverCore.Caller caller(DriverCore.Spec spec) throws DriverCore.BadSpec {
        SSLContext ctx = DriverCore.sslContext(DriverCore.trustOnly(spec.caFile));
        long timeoutMs = spec.timeoutMillis();
        HttpClient client = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_2)
                .sslContext(ctx)
                .connectTimeout(Duration.ofMillis(timeoutMs))
                .build();
        ScheduledExecutorService watchdog = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "bench-watchdog");
            t.setDaemon(true);
            return t;
        });
        return (r, body) -> {
            DriverCore.Outcome o = new DriverCore.Outcome();
            Counter counter = new Counter();
            HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(spec.url + r.path))
                    .timeout(Duration.ofMillis(timeoutMs))
                    .header("x-request-id", r.id);
            if (body != null) {
                b.header("content-type", "application/octet-stream")
                        .method(r.method, HttpRequest.BodyPublishers.ofByteArray(body));
            } else {
                b.method(r.method, HttpRequest.BodyPublishers.noBody());
            }
            HttpResponse.BodyHandler<Long> handler = info -> {
                o.status = info.statusCode(); // the headers are in: a response, body pending
                o.protocol = protocol(info.version());
                return HttpResponse.BodySubscribers.fromSubscriber(counter,
                        c -> c.bytes.get());
            };
            Thread worker = Thread.currentThread();
            boolean[] state = {true, false}; // active, fired
            ScheduledFuture<?> dog = watchdog.schedule(() -> {
                synchronized (state) {
                    if (state[0]) {
                        state[1] = true;
                        worker.interrupt();
                    }
                }
            }, timeoutMs + GRACE_MS, TimeUnit.MILLISECONDS);
            try {
                HttpResponse<Long> resp = client.send(b.build(), handler);
                o.status = resp.statusCode();
                o.protocol = protocol(resp.version());
                o.bytes = resp.body();
            } catch (InterruptedException e) {
                o.bytes = counter.bytes.get();
                o.error = "whole-request timeout: no complete response within "
                        + spec.timeoutS + " s (" + e + ")";
            } catch (Exception e) {
                o.bytes = counter.bytes.get();
                o.error = e.toString();
            } finally {
                synchronized (state) {
                    state[0] = false;
                }
                dog.cancel(false);
                Thread.interrupted(); // clear an interrupt that raced the end of send
            }
            return o;
        };
    }

    public static void main(String[] args) {
        DriverCore.main(args, "java", System.getProperty("java.version"), JavaDriver::caller);
    }
}
