# frozen_string_literal: true

# leadsync's HTTP ingestion API from Ruby: net/http and json from the standard library,
# no gems (the seed needed Savon to reach Marketo; leadsync does the Marketo side).
#
#   LEADSYNC_API_URL=http://127.0.0.1:8080 LEADSYNC_API_KEY=lsk_... \
#     ruby examples/ruby/leadsync_client.rb ann@example.com FirstName=Ann Company=Acme
#
# With no arguments it upserts the seed's first lead (em1000@etestd.marketo.net).
# It prints "request_id: <id>", then the final outcome as one line of JSON.
# Optional: LEADSYNC_IDEMPOTENCY_KEY (default: a random one, reused by every retry of the
# POST) and LEADSYNC_WAIT_S (how long to wait for a final outcome, default 60).
# Exit status: 0 CREATED or UPDATED; 1 the API refused the request or could not be
# reached (the field messages go to stderr); 2 usage; 3 the lead FAILED (or was
# dead-lettered); 4 still PENDING when LEADSYNC_WAIT_S ran out.

require 'json'
require 'net/http'
require 'securerandom'
require 'time'
require 'uri'

module Leadsync
  # The API refused a request (status and its field errors), or could not be reached (status 0).
  class Error < StandardError
    attr_reader :status, :errors

    def initialize(message, status: 0, errors: [])
      super(message)
      @status = status
      @errors = errors
    end
  end

  # A small client: upsert, outcome, wait_outcome.
  class Client
    RETRY_STATUSES = [429, 503].freeze
    WAIT_CAP_S = 60.0
    NETWORK_ERRORS = [IOError, SystemCallError, Timeout::Error, SocketError, EOFError].freeze

    def initialize(base_url, api_key, timeout_s: 10.0, max_attempts: 6)
      @base = URI(base_url.chomp('/'))
      @api_key = api_key
      @timeout_s = timeout_s
      @max_attempts = max_attempts
    end

    # Enqueue one upsert; returns its request id. Retries on 429 and 503 (waiting as
    # Retry-After says) and on network errors, always with the same Idempotency-Key, so a
    # retried POST never enqueues twice.
    def upsert(lead, idempotency_key: nil)
      key = idempotency_key || SecureRandom.hex(16)
      call(:post, '/v1/leads', body: lead, headers: { 'Idempotency-Key' => key }).fetch('request_id')
    end

    # The outcome of a request: request_id, status, lead_id, error, error_code, ...
    def outcome(request_id)
      call(:get, "/v1/leads/#{URI.encode_www_form_component(request_id)}")
    end

    # Poll until the outcome is final (not PENDING) or timeout_s passes: the last one read.
    def wait_outcome(request_id, timeout_s: 60.0)
      deadline = monotonic + timeout_s
      pause = 0.2
      loop do
        current = outcome(request_id)
        return current if current['status'] != 'PENDING' || monotonic + pause > deadline

        sleep pause
        pause = [pause * 1.5, 2.0].min
      end
    end

    private

    # One API call with its retries; the decoded JSON answer of a 2xx.
    def call(method, path, body: nil, headers: {})
      attempt = 0
      loop do
        attempt += 1
        begin
          response = send_request(method, path, body, headers)
        rescue *NETWORK_ERRORS => e
          raise Error, "#{method.upcase} #{path}: #{e.message}" if attempt >= @max_attempts

          sleep backoff(attempt) # network error: same key, again
          next
        end
        status = response.code.to_i
        answer = parse(response.body)
        return answer if (200..299).cover?(status)

        if RETRY_STATUSES.include?(status) && attempt < @max_attempts
          sleep [retry_after(response['Retry-After']) || backoff(attempt), WAIT_CAP_S].min
          next
        end
        errors = answer['errors'].is_a?(Array) ? answer['errors'] : []
        text = errors.map { |e| [e['field'], e['message']].compact.reject(&:empty?).join(': ') }.join('; ')
        raise Error.new("#{method.upcase} #{path}: HTTP #{status} #{text}".strip, status: status, errors: errors)
      end
    end

    def send_request(method, path, body, headers)
      uri = URI("#{@base}#{path}")
      request = (method == :post ? Net::HTTP::Post : Net::HTTP::Get).new(uri)
      request['Authorization'] = "Bearer #{@api_key}"
      request['Accept'] = 'application/json'
      headers.each { |name, value| request[name] = value }
      unless body.nil?
        request['Content-Type'] = 'application/json'
        request.body = JSON.generate(body)
      end
      Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == 'https',
                                          open_timeout: @timeout_s, read_timeout: @timeout_s) do |http|
        http.request(request)
      end
    end

    def parse(text)
      value = JSON.parse(text.to_s)
      value.is_a?(Hash) ? value : {}
    rescue JSON::ParserError
      {}
    end

    # Retry-After is seconds or an HTTP date.
    def retry_after(value)
      return nil if value.nil?
      return [Float(value), 0.0].max if value.match?(/\A\s*\d+(\.\d+)?\s*\z/)

      [Time.httpdate(value) - Time.now, 0.0].max
    rescue ArgumentError
      nil
    end

    def backoff(attempt)
      [0.5 * (2**(attempt - 1)), 8.0].min
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end

def main(argv)
  url = ENV.fetch('LEADSYNC_API_URL', '')
  key = ENV.fetch('LEADSYNC_API_KEY', '')
  if url.empty? || key.empty?
    warn "usage: LEADSYNC_API_URL=... LEADSYNC_API_KEY=... ruby #{$PROGRAM_NAME} [EMAIL [Name=Value ...]]"
    return 2
  end
  if argv.empty? # the seed's first lead
    lead = { email: 'em1000@etestd.marketo.net', attributes: { Company: 'Marketo1000', Phone: '650-555-1000' } }
  else
    bad = argv[1..].reject { |pair| pair.include?('=') }
    unless bad.empty?
      warn "not Name=Value: #{bad.first}"
      return 2
    end
    lead = { email: argv[0], attributes: argv[1..].to_h { |pair| pair.split('=', 2) } }
  end
  client = Leadsync::Client.new(url, key)
  idempotency_key = ENV.fetch('LEADSYNC_IDEMPOTENCY_KEY', '')
  begin
    request_id = client.upsert(lead, idempotency_key: idempotency_key.empty? ? nil : idempotency_key)
    puts "request_id: #{request_id}"
    $stdout.flush
    outcome = client.wait_outcome(request_id, timeout_s: Float(ENV.fetch('LEADSYNC_WAIT_S', '60')))
  rescue Leadsync::Error => e
    warn "leadsync: #{e.message}"
    return 1
  end
  puts JSON.generate(outcome)
  case outcome['status']
  when 'CREATED', 'UPDATED' then 0
  when 'PENDING' then 4
  else 3
  end
end

exit(main(ARGV)) if $PROGRAM_NAME == __FILE__
