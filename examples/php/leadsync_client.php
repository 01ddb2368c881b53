<?php
// leadsync's HTTP ingestion API from PHP: php-cli and the curl extension, nothing else.
//
// The seed synced leads with SoapClient straight to Marketo; this enqueues them with
// leadsync, which batches, signs, rate-limits and retries the Marketo calls for you.
//
//   LEADSYNC_API_URL=http://127.0.0.1:8080 LEADSYNC_API_KEY=lsk_... \
//     php examples/php/leadsync_client.php ann@example.com FirstName=Ann Company=Acme
//
// With no arguments it upserts the seed's first lead (em1000@etestd.marketo.net).
// It prints "request_id: <id>", then the final outcome as one line of JSON.
// Optional: LEADSYNC_IDEMPOTENCY_KEY (default: a random one, reused by every retry of the
// POST) and LEADSYNC_WAIT_S (how long to wait for a final outcome, default 60).
// Exit status: 0 CREATED or UPDATED; 1 the API refused the request or could not be
// reached (the field messages go to stderr); 2 usage; 3 the lead FAILED (or was
// dead-lettered); 4 still PENDING when LEADSYNC_WAIT_S ran out.
//
// The client is the LeadsyncClient class; the command line is at the bottom.

declare(strict_types=1);

final class LeadsyncError extends Exception
{
    /** @param list<array{field?: string, message?: string}> $errors */
    public function __construct(string $message, public readonly int $status = 0, public readonly array $errors = [])
    {
        parent::__construct($message);
    }
}

final class LeadsyncClient
{
    private const RETRY_STATUSES = [429, 503];
    private const FINAL_WAIT_CAP_S = 60.0;

    public function __construct(
        private readonly string $baseUrl,
        private readonly string $apiKey,
        private readonly float $timeoutS = 10.0,
        private readonly int $maxAttempts = 6,
    ) {
    }

    /**
     * Enqueue one upsert; returns its request id. Retries on 429 and 503 (waiting as
     * Retry-After says) and on network errors, always with the same Idempotency-Key, so a
     * retried POST never enqueues twice.
     *
     * @param array{email?: string, attributes?: array<string, mixed>} $lead
     */
    public function upsert(array $lead, ?string $idempotencyKey = null): string
    {
        if (array_key_exists('attributes', $lead)) {
            $lead['attributes'] = (object) $lead['attributes']; // {} even when empty
        }
        $key = $idempotencyKey ?? bin2hex(random_bytes(16));
        $answer = $this->call('POST', '/v1/leads', $lead, ['Idempotency-Key: ' . $key]);
        return (string) $answer['request_id'];
    }

    /** The outcome of a request: request_id, status, lead_id, error, error_code, ... */
    public function outcome(string $requestId): array
    {
        return $this->call('GET', '/v1/leads/' . rawurlencode($requestId));
    }

    /** Poll until the outcome is final (not PENDING) or $timeoutS passes: the last one read. */
    public function waitOutcome(string $requestId, float $timeoutS = 60.0): array
    {
        $deadline = microtime(true) + $timeoutS;
        $pause = 0.2;
        while (true) {
            $outcome = $this->outcome($requestId);
            if ($outcome['status'] !== 'PENDING' || microtime(true) + $pause > $deadline) {
                return $outcome;
            }
            usleep((int) ($pause * 1e6));
            $pause = min($pause * 1.5, 2.0);
        }
    }

    /** One API call with its retries; the decoded JSON answer of a 2xx. */
    private function call(string $method, string $path, ?array $body = null, array $headers = []): array
    {
        for ($attempt = 1; ; $attempt++) {
            try {
                [$status, $answer, $retryAfter] = $this->send($method, $path, $body, $headers);
            } catch (LeadsyncError $e) {
                if ($e->status !== 0 || $attempt >= $this->maxAttempts) {
                    throw $e;
                }
                usleep((int) (self::backoff($attempt) * 1e6)); // network error: same key, again
                continue;
            }
            if ($status >= 200 && $status < 300) {
                return $answer;
            }
            if (in_array($status, self::RETRY_STATUSES, true) && $attempt < $this->maxAttempts) {
                $wait = $retryAfter ?? self::backoff($attempt);
                usleep((int) (min($wait, self::FINAL_WAIT_CAP_S) * 1e6));
                continue;
            }
            $errors = is_array($answer['errors'] ?? null) ? $answer['errors'] : [];
            $text = implode('; ', array_map(
                static fn ($e) => trim(($e['field'] ?? '') . ': ' . ($e['message'] ?? ''), ': '),
                $errors,
            ));
            throw new LeadsyncError("$method $path: HTTP $status" . ($text !== '' ? " $text" : ''), $status, $errors);
        }
    }

    /** @return array{int, array, float|null} status, decoded body, Retry-After in seconds */
    private function send(string $method, string $path, ?array $body, array $headers): array
    {
        $retryAfter = null;
        $curl = curl_init(rtrim($this->baseUrl, '/') . $path);
        $options = [
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_CONNECTTIMEOUT_MS => (int) ($this->timeoutS * 1000),
            CURLOPT_TIMEOUT_MS => (int) ($this->timeoutS * 1000),
            CURLOPT_HTTPHEADER => array_merge([
                'Authorization: Bearer ' . $this->apiKey,
                'Accept: application/json',
            ], $headers),
            CURLOPT_HEADERFUNCTION => static function ($curl, string $line) use (&$retryAfter): int {
                if (stripos($line, 'Retry-After:') === 0) {
                    $retryAfter = self::parseRetryAfter(trim(substr($line, 12)));
                }
                return strlen($line);
            },
        ];
        if ($body !== null) {
            $options[CURLOPT_POSTFIELDS] = json_encode($body, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
            $options[CURLOPT_HTTPHEADER][] = 'Content-Type: application/json';
        }
        curl_setopt_array($curl, $options);
        $raw = curl_exec($curl);
        if ($raw === false) {
            $message = curl_error($curl);
            curl_close($curl);
            throw new LeadsyncError("$method $path: $message");
        }
        $status = (int) curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
        curl_close($curl);
        $answer = json_decode((string) $raw, true);
        return [$status, is_array($answer) ? $answer : [], $retryAfter];
    }

    /** Retry-After is seconds or an HTTP date. */
    private static function parseRetryAfter(string $value): ?float
    {
        if (is_numeric($value)) {
            return max(0.0, (float) $value);
        }
        $at = strtotime($value);
        return $at === false ? null : max(0.0, (float) ($at - time()));
    }

    private static function backoff(int $attempt): float
    {
        return min(0.5 * 2 ** ($attempt - 1), 8.0);
    }
}

function main(array $argv): int
{
    $url = getenv('LEADSYNC_API_URL');
    $key = getenv('LEADSYNC_API_KEY');
    if (!$url || !$key) {
        fwrite(STDERR, "usage: LEADSYNC_API_URL=... LEADSYNC_API_KEY=... php {$argv[0]} [EMAIL [Name=Value ...]]\n");
        return 2;
    }
    if (count($argv) > 1) {
        $lead = ['email' => $argv[1], 'attributes' => []];
        foreach (array_slice($argv, 2) as $pair) {
            if (!str_contains($pair, '=')) {
                fwrite(STDERR, "not Name=Value: $pair\n");
                return 2;
            }
            [$name, $value] = explode('=', $pair, 2);
            $lead['attributes'][$name] = $value;
        }
    } else { // the seed's first lead
        $lead = ['email' => 'em1000@etestd.marketo.net', 'attributes' => ['Company' => 'Marketo1000', 'Phone' => '650-555-1000']];
    }
    $client = new LeadsyncClient($url, $key);
    $waitS = (float) (getenv('LEADSYNC_WAIT_S') ?: 60);
    try {
        $requestId = $client->upsert($lead, getenv('LEADSYNC_IDEMPOTENCY_KEY') ?: null);
        echo "request_id: $requestId\n";
        $outcome = $client->waitOutcome($requestId, $waitS);
    } catch (LeadsyncError $e) {
        fwrite(STDERR, 'leadsync: ' . $e->getMessage() . "\n");
        return 1;
    }
    echo json_encode($outcome, JSON_UNESCAPED_SLASHES), "\n";
    return match ($outcome['status']) {
        'CREATED', 'UPDATED' => 0,
        'PENDING' => 4,
        default => 3,
    };
}

exit(main($argv));
