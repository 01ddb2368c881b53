// leadsync's HTTP ingestion API from Java 11+: java.net.http.HttpClient and a small JSON
// reader below, no jars (the seed needed generated JAX-WS stubs to reach Marketo).
//
//   LEADSYNC_API_URL=http://127.0.0.1:8080 LEADSYNC_API_KEY=lsk_... \
//     java examples/java/LeadsyncClient.java ann@example.com FirstName=Ann Company=Acme
//
// With no arguments it upserts the seed's first lead (em1000@etestd.marketo.net).
// It prints "request_id: <id>", then the final outcome as one line of JSON.
// Optional: LEADSYNC_IDEMPOTENCY_KEY (default: a random one, reused by every retry of the
// POST) and LEADSYNC_WAIT_S (how long to wait for a final outcome, default 60).
// Exit status: 0 CREATED or UPDATED; 1 the API refused the request or could not be
// reached (the field messages go to stderr); 2 usage; 3 the lead FAILED (or was
// dead-lettered); 4 still PENDING when LEADSYNC_WAIT_S ran out.

import java.io.IOException;
import java.math.BigDecimal;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;

public final class LeadsyncClient {
    private static final Set<Integer> RETRY_STATUSES = Set.of(429, 503);
    private static final double WAIT_CAP_S = 60.0;

    /** The API refused a request (status and its field errors), or could not be reached (status 0). */
    public static final class LeadsyncException extends Exception {
        private static final long serialVersionUID = 1L;
        public final int status;
        public final List<Object> errors;

        LeadsyncException(String message, int status, List<Object> errors) {
            super(message);
            this.status = status;
            this.errors = errors;
        }
    }

    private final String baseUrl;
    private final String apiKey;
    private final Duration timeout;
    private final int maxAttempts;
    private final HttpClient http;

    public LeadsyncClient(String baseUrl, String apiKey) {
        this(baseUrl, apiKey, Duration.ofSeconds(10), 6);
    }

    public LeadsyncClient(String baseUrl, String apiKey, Duration timeout, int maxAttempts) {
        this.baseUrl = baseUrl.replaceAll("/+$", "");
        this.apiKey = apiKey;
        this.timeout = timeout;
        this.maxAttempts = maxAttempts;
        this.http = HttpClient.newBuilder().connectTimeout(timeout).build();
    }

    /**
     * Enqueue one upsert; returns its request id. Retries on 429 and 503 (waiting as
     * Retry-After says) and on network errors, always with the same Idempotency-Key, so a
     * retried POST never enqueues twice.
     */
    public String upsert(Map<String, Object> lead, String idempotencyKey) throws LeadsyncException {
        String key = idempotencyKey != null ? idempotencyKey : UUID.randomUUID().toString();
        return (String) call("POST", "/v1/leads", Json.write(lead), key).get("request_id");
    }

    /** The outcome of a request: request_id, status, lead_id, error, error_code, ... */
    public Map<String, Object> outcome(String requestId) throws LeadsyncException {
        return call("GET", "/v1/leads/" + URLEncoder.encode(requestId, StandardCharsets.UTF_8), null, null);
    }

    /** Poll until the outcome is final (not PENDING) or timeoutS passes: the last one read. */
    public Map<String, Object> waitOutcome(String requestId, double timeoutS) throws LeadsyncException {
        long deadline = System.nanoTime() + (long) (timeoutS * 1e9);
        double pause = 0.2;
        while (true) {
            Map<String, Object> current = outcome(requestId);
            if (!"PENDING".equals(current.get("status")) || System.nanoTime() + (long) (pause * 1e9) > deadline) {
                return current;
            }
            sleep(pause);
            pause = Math.min(pause * 1.5, 2.0);
        }
    }

    /** One API call with its retries; the decoded JSON answer of a 2xx. */
    @SuppressWarnings("unchecked")
    private Map<String, Object> call(String method, String path, String body, String idempotencyKey)
            throws LeadsyncException {
        for (int attempt = 1; ; attempt++) {
            HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(baseUrl + path))
                    .timeout(timeout)
                    .header("Authorization", "Bearer " + apiKey)
                    .header("Accept", "application/json");
            if (idempotencyKey != null) {
                request.header("Idempotency-Key", idempotencyKey);
            }
            if (body != null) {
                request.header("Content-Type", "application/json")
                        .method(method, HttpRequest.BodyPublishers.ofString(body, StandardCharsets.UTF_8));
            } else {
                request.method(method, HttpRequest.BodyPublishers.noBody());
            }
            HttpResponse<String> response;
            try {
                response = http.send(request.build(), HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
            } catch (IOException e) {
                if (attempt >= maxAttempts) {
                    throw new LeadsyncException(method + " " + path + ": " + e, 0, List.of());
                }
                sleep(backoff(attempt)); // network error: same key, again
                continue;
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new LeadsyncException(method + " " + path + ": interrupted", 0, List.of());
            }
            Map<String, Object> answer = Map.of();
            try {
                if (Json.read(response.body()) instanceof Map<?, ?> map) {
                    answer = (Map<String, Object>) map;
                }
            } catch (IllegalArgumentException notJson) {
                // keep {}
            }
            int status = response.statusCode();
            if (status >= 200 && status < 300) {
                return answer;
            }
            if (RETRY_STATUSES.contains(status) && attempt < maxAttempts) {
                Double wait = retryAfter(response.headers().firstValue("Retry-After").orElse(null));
                sleep(Math.min(wait != null ? wait : backoff(attempt), WAIT_CAP_S));
                continue;
            }
            List<Object> errors = answer.get("errors") instanceof List<?> list ? (List<Object>) list : List.of();
            List<String> parts = new ArrayList<>();
            for (Object error : errors) {
                if (error instanceof Map<?, ?> e) {
                    String field = e.get("field") instanceof String f ? f : "";
                    String message = e.get("message") instanceof String m ? m : "";
                    parts.add(field.isEmpty() ? message : message.isEmpty() ? field : field + ": " + message);
                }
            }
            String text = String.join("; ", parts);
            throw new LeadsyncException(
                    (method + " " + path + ": HTTP " + status + " " + text).strip(), status, errors);
        }
    }

    /** Retry-After is seconds or an HTTP date. */
    private static Double retryAfter(String value) {
        if (value == null) {
            return null;
        }
        try {
            return Math.max(0.0, Double.parseDouble(value.strip()));
        } catch (NumberFormatException notSeconds) {
            try {
                ZonedDateTime at = ZonedDateTime.parse(value.strip(), DateTimeFormatter.RFC_1123_DATE_TIME);
                return Math.max(0.0, Duration.between(ZonedDateTime.now(), at).toMillis() / 1000.0);
            } catch (RuntimeException notDate) {
                return null;
            }
        }
    }

    private static double backoff(int attempt) {
        return Math.min(0.5 * Math.pow(2, attempt - 1), 8.0);
    }

    private static void sleep(double seconds) {
        try {
            Thread.sleep((long) (seconds * 1000));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    public static void main(String[] args) {
        System.exit(run(args));
    }

    static int run(String[] args) {
        String url = System.getenv().getOrDefault("LEADSYNC_API_URL", "");
        String key = System.getenv().getOrDefault("LEADSYNC_API_KEY", "");
        if (url.isEmpty() || key.isEmpty()) {
            System.err.println("usage: LEADSYNC_API_URL=... LEADSYNC_API_KEY=... java LeadsyncClient.java [EMAIL [Name=Value ...]]");
            return 2;
        }
        Map<String, Object> lead = new LinkedHashMap<>();
        Map<String, Object> attributes = new LinkedHashMap<>();
        if (args.length == 0) { // the seed's first lead
            lead.put("email", "em1000@etestd.marketo.net");
            attributes.put("Company", "Marketo1000");
            attributes.put("Phone", "650-555-1000");
        } else {
            lead.put("email", args[0]);
            for (int i = 1; i < args.length; i++) {
                int eq = args[i].indexOf('=');
                if (eq < 0) {
                    System.err.println("not Name=Value: " + args[i]);
                    return 2;
                }
                attributes.put(args[i].substring(0, eq), args[i].substring(eq + 1));
            }
        }
        lead.put("attributes", attributes);
        LeadsyncClient client = new LeadsyncClient(url, key);
        String idempotencyKey = System.getenv("LEADSYNC_IDEMPOTENCY_KEY");
        double waitS = Double.parseDouble(System.getenv().getOrDefault("LEADSYNC_WAIT_S", "60"));
        Map<String, Object> outcome;
        try {
            String requestId = client.upsert(lead, idempotencyKey == null || idempotencyKey.isEmpty() ? null : idempotencyKey);
            System.out.println("request_id: " + requestId);
            outcome = client.waitOutcome(requestId, waitS);
        } catch (LeadsyncException e) {
            System.err.println("leadsync: " + e.getMessage());
            return 1;
        }
        System.out.println(Json.write(outcome));
        Object status = outcome.get("status");
        if ("CREATED".equals(status) || "UPDATED".equals(status)) {
            return 0;
        }
        return "PENDING".equals(status) ? 4 : 3;
    }

    /** Just enough JSON: objects, arrays, strings, numbers, true/false/null. */
    static final class Json {
        private final String text;
        private int at;

        private Json(String text) {
            this.text = text;
        }

        static Object read(String text) {
            Json json = new Json(text);
            Object value = json.value();
            json.space();
            if (json.at != text.length()) {
                throw new IllegalArgumentException("trailing text at " + json.at);
            }
            return value;
        }

        static String write(Object value) {
            StringBuilder out = new StringBuilder();
            write(value, out);
            return out.toString();
        }

        private static void write(Object value, StringBuilder out) {
            if (value == null) {
                out.append("null");
            } else if (value instanceof String s) {
                out.append('"');
                for (char c : s.toCharArray()) {
                    switch (c) {
                        case '"' -> out.append("\\\"");
                        case '\\' -> out.append("\\\\");
                        case '\n' -> out.append("\\n");
                        case '\r' -> out.append("\\r");
                        case '\t' -> out.append("\\t");
                        default -> {
                            if (c < 0x20) {
                                out.append(String.format("\\u%04x", (int) c));
                            } else {
                                out.append(c);
                            }
                        }
                    }
                }
                out.append('"');
            } else if (value instanceof Map<?, ?> map) {
                out.append('{');
                String sep = "";
                for (Map.Entry<?, ?> entry : map.entrySet()) {
                    out.append(sep);
                    write(String.valueOf(entry.getKey()), out);
                    out.append(':');
                    write(entry.getValue(), out);
                    sep = ",";
                }
                out.append('}');
            } else if (value instanceof List<?> list) {
                out.append('[');
                String sep = "";
                for (Object item : list) {
                    out.append(sep);
                    write(item, out);
                    sep = ",";
                }
                out.append(']');
            } else if (value instanceof Double d && !d.isNaN() && !d.isInfinite()) {
                out.append(BigDecimal.valueOf(d).stripTrailingZeros().toPlainString());
            } else {
                out.append(value); // Boolean, Long, Double
            }
        }

        private void space() {
            while (at < text.length() && Character.isWhitespace(text.charAt(at))) {
                at++;
            }
        }

        private IllegalArgumentException bad() {
            return new IllegalArgumentException("not JSON at " + at);
        }

        private Object value() {
            space();
            if (at >= text.length()) {
                throw bad();
            }
            char c = text.charAt(at);
            if (c == '{') {
                Map<String, Object> map = new LinkedHashMap<>();
                at++;
                space();
                if (text.startsWith("}", at)) {
                    at++;
                    return map;
                }
                while (true) {
                    space();
                    if (!text.startsWith("\"", at)) {
                        throw bad();
                    }
                    String name = string();
                    space();
                    if (!text.startsWith(":", at++)) {
                        throw bad();
                    }
                    map.put(name, value());
                    space();
                    if (text.startsWith(",", at)) {
                        at++;
                    } else if (text.startsWith("}", at)) {
                        at++;
                        return map;
                    } else {
                        throw bad();
                    }
                }
            }
            if (c == '[') {
                List<Object> list = new ArrayList<>();
                at++;
                space();
                if (text.startsWith("]", at)) {
                    at++;
                    return list;
                }
                while (true) {
                    list.add(value());
                    space();
                    if (text.startsWith(",", at)) {
                        at++;
                    } else if (text.startsWith("]", at)) {
                        at++;
                        return list;
                    } else {
                        throw bad();
                    }
                }
            }
            if (c == '"') {
                return string();
            }
            for (String word : new String[] {"true", "false", "null"}) {
                if (text.startsWith(word, at)) {
                    at += word.length();
                    return word.equals("null") ? null : Boolean.valueOf(word);
                }
            }
            int start = at;
            while (at < text.length() && "+-0123456789.eE".indexOf(text.charAt(at)) >= 0) {
                at++;
            }
            String number = text.substring(start, at);
            try {
                return number.matches("-?\\d+") ? (Object) Long.valueOf(number) : (Object) Double.valueOf(number);
            } catch (NumberFormatException e) {
                throw bad();
            }
        }

        private String string() {
            StringBuilder out = new StringBuilder();
            at++; // the opening quote
            while (at < text.length()) {
                char c = text.charAt(at++);
                if (c == '"') {
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                if (at >= text.length()) {
                    break;
                }
                char e = text.charAt(at++);
                switch (e) {
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'n' -> out.append('\n');
                    case 'r' -> out.append('\r');
                    case 't' -> out.append('\t');
                    case 'u' -> {
                        if (at + 4 > text.length()) {
                            throw bad();
                        }
                        out.append((char) Integer.parseInt(text.substring(at, at + 4), 16));
                        at += 4;
                    }
                    default -> out.append(e); // \" \\ \/
                }
            }
            throw bad();
        }
    }
}
