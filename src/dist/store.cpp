#include "dist/store.h"

#include <gloo/rendezvous/file_store.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "strata/core/error.h"

namespace strata::dist {

namespace {

using Clock = std::chrono::steady_clock;

std::string errno_text() { return std::strerror(errno); }

// Sends everything or throws (MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE).
void send_all(int fd, const void* data, size_t size, const std::string& where) {
  const char* bytes = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t sent = ::send(fd, bytes, size, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    STRATA_CHECK(sent > 0, "rendezvous store {}: send failed: {}", where, errno_text());
    bytes += sent;
    size -= static_cast<size_t>(sent);
  }
}

// Receives exactly `size` bytes before `deadline`; false when the peer closed the
// connection first. Throws on timeout and errors.
bool receive_all(int fd, void* data, size_t size, Clock::time_point deadline, const std::string& where,
                 const std::string& waiting_for) {
  char* bytes = static_cast<char*>(data);
  while (size > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    STRATA_CHECK(left > 0, "rendezvous store {}: timed out waiting for {}", where, waiting_for);
    pollfd p{fd, POLLIN, 0};
    int ready = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (ready < 0 && errno == EINTR) continue;
    STRATA_CHECK(ready >= 0, "rendezvous store {}: poll failed: {}", where, errno_text());
    if (ready == 0) continue;
    ssize_t got = ::recv(fd, bytes, size, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got == 0) return false;
    STRATA_CHECK(got > 0, "rendezvous store {}: receive failed: {}", where, errno_text());
    bytes += got;
    size -= static_cast<size_t>(got);
  }
  return true;
}

constexpr auto kForever = Clock::time_point::max();

// Keys and values are addresses and NCCL ids; a longer length is not from a rank.
constexpr uint32_t kLongestString = 1u << 20;

void send_string(int fd, const char* data, size_t size, const std::string& where) {
  uint32_t length = static_cast<uint32_t>(size);
  send_all(fd, &length, sizeof length, where);
  send_all(fd, data, size, where);
}

bool receive_string(int fd, std::vector<char>& out, Clock::time_point deadline, const std::string& where,
                    const std::string& waiting_for) {
  uint32_t length = 0;
  if (!receive_all(fd, &length, sizeof length, deadline, where, waiting_for)) return false;
  STRATA_CHECK(length <= kLongestString, "rendezvous store {}: a string of {} bytes is longer than the protocol allows",
               where, length);
  out.resize(length);
  return receive_all(fd, out.data(), length, deadline, where, waiting_for);
}

// How long a client waits for the greeting and its admission, each attempt (it may
// overrun the rendezvous timeout by that much), and the server for a client's run id.
constexpr auto kHandshakeTimeout = std::chrono::seconds(2);
constexpr auto kAdmissionTimeout = std::chrono::seconds(10);

// What the server sends first on every connection.
constexpr char kGreeting[] = "strata rendezvous store 1\n";
constexpr size_t kGreetingSize = sizeof kGreeting - 1;

// True when the connected socket is its own peer (same address and port at both ends).
bool connected_to_itself(int fd) {
  sockaddr_storage local{}, peer{};
  socklen_t local_size = sizeof local, peer_size = sizeof peer;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size) != 0 ||
      ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) != 0)
    return false;
  return local_size == peer_size && std::memcmp(&local, &peer, local_size) == 0;
}

// Connects to one address, checks the greeting and is let in with `run_id`, within
// `deadline`; the socket, or -1 with the reason in `error`.
int connect_to_store(const addrinfo& a, const std::string& run_id, Clock::time_point deadline,
                     const std::string& where, std::string& error) {
  int fd = ::socket(a.ai_family, a.ai_socktype | SOCK_CLOEXEC, a.ai_protocol);
  if (fd < 0) {
    error = errno_text();
    return -1;
  }
  if (::connect(fd, a.ai_addr, a.ai_addrlen) != 0) {
    error = errno_text();
  } else if (connected_to_itself(fd)) {
    error = "the connection reached itself";
  } else {
    char greeting[kGreetingSize] = {};
    char admitted = 0;
    try {
      if (!receive_all(fd, greeting, kGreetingSize, deadline, where, "the store's greeting") ||
          std::memcmp(greeting, kGreeting, kGreetingSize) != 0) {
        error = "something other than a Strata rendezvous store answers there";
      } else {
        send_string(fd, run_id.data(), run_id.size(), where);
        if (receive_all(fd, &admitted, 1, deadline, where, "the store to admit this run") && admitted == 1)
          return fd;
        error = fmt::format("the store there serves another run (this rank's run id is '{}')", run_id);
      }
    } catch (const Error&) {
      error = "something there accepts connections but does not answer as a Strata rendezvous store";
    }
  }
  ::close(fd);
  return -1;
}

}  // namespace

TcpStoreServer::TcpStoreServer(int port, std::string run_id) : run_id_(std::move(run_id)) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  STRATA_CHECK(listen_fd_ >= 0, "rendezvous store: socket failed: {}", errno_text());
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || ::listen(listen_fd_, 1024) != 0) {
    std::string reason = errno_text();
    ::close(listen_fd_);
    STRATA_FAIL("rendezvous store: rank 0 cannot listen on port {}: {} (choose another with --store-port or "
                "STRATA_STORE_PORT; by default it is MASTER_PORT + 1)",
                port, reason);
  }
  accept_thread_ = std::thread([this] { accept_loop(); });
}

TcpStoreServer::~TcpStoreServer() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);
  }
  changed_.notify_all();
  ::shutdown(listen_fd_, SHUT_RDWR);
  accept_thread_.join();
  ::close(listen_fd_);
  for (std::thread& t : client_threads_) t.join();
  for (int fd : client_fds_) ::close(fd);
}

void TcpStoreServer::accept_loop() {
  while (true) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      if (fd >= 0) ::close(fd);
      return;
    }
    if (fd < 0) continue;  // EINTR, ECONNABORTED: keep serving
    client_fds_.push_back(fd);
    client_threads_.emplace_back([this, fd] { serve(fd); });
  }
}

// One client. Errors end this client's connection, never the server.
void TcpStoreServer::serve(int fd) {
  const std::string where = "server";
  try {
    send_all(fd, kGreeting, kGreetingSize, where);
    std::vector<char> run_id;
    if (!receive_string(fd, run_id, Clock::now() + kAdmissionTimeout, where, "a run id")) return;
    const char admitted = std::string(run_id.begin(), run_id.end()) == run_id_ ? 1 : 0;
    send_all(fd, &admitted, 1, where);
    if (!admitted) {
      ::shutdown(fd, SHUT_RDWR);
      return;
    }
    while (true) {
      char request = 0;
      std::vector<char> key, value;
      if (!receive_all(fd, &request, 1, kForever, where, "a request")) return;
      if (!receive_string(fd, key, kForever, where, "a key")) return;
      std::string name(key.begin(), key.end());
      if (request == 'S') {
        if (!receive_string(fd, value, kForever, where, "a value")) return;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          values_[name] = std::move(value);
        }
        changed_.notify_all();
        char ack = 1;
        send_all(fd, &ack, 1, where);
      } else if (request == 'G') {
        {
          std::unique_lock<std::mutex> lock(mutex_);
          changed_.wait(lock, [&] { return stopping_ || values_.count(name); });
          if (stopping_) return;
          value = values_[name];
        }
        send_string(fd, value.data(), value.size(), where);
      } else {
        return;
      }
    }
  } catch (const Error&) {
    // The client went away mid-request; it reports its own error.
  }
}

TcpStore::TcpStore(const std::string& host, int port, std::chrono::milliseconds timeout, const std::string& run_id)
    : where_(fmt::format("{}:{}", host, port)), timeout_(timeout) {
  auto deadline = Clock::now() + timeout;
  std::string last_error = "no address";
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  // Rank 0 may start its server after the others try to connect: retry until the deadline.
  while (true) {
    addrinfo* addresses = nullptr;
    int status = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &addresses);
    if (status != 0) {
      last_error = ::gai_strerror(status);
    } else {
      for (addrinfo* a = addresses; a != nullptr && fd_ < 0; a = a->ai_next)
        fd_ = connect_to_store(*a, run_id, Clock::now() + kHandshakeTimeout, where_, last_error);
      ::freeaddrinfo(addresses);
    }
    if (fd_ >= 0) break;
    STRATA_CHECK(Clock::now() < deadline,
                 "rendezvous: could not reach rank 0's store at {} within {} s ({}); is rank 0 running and "
                 "MASTER_ADDR right?",
                 where_, timeout.count() / 1000.0, last_error);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

TcpStore::~TcpStore() { ::close(fd_); }

void TcpStore::set(const std::string& key, const std::vector<char>& value) {
  char request = 'S';
  send_all(fd_, &request, 1, where_);
  send_string(fd_, key.data(), key.size(), where_);
  send_string(fd_, value.data(), value.size(), where_);
  char ack = 0;
  STRATA_CHECK(receive_all(fd_, &ack, 1, Clock::now() + timeout_, where_, "the store to confirm " + key),
               "rendezvous store {}: rank 0 closed the connection", where_);
}

std::vector<char> TcpStore::get(const std::string& key) { return get(key, timeout_); }

std::vector<char> TcpStore::get(const std::string& key, std::chrono::milliseconds timeout) {
  char request = 'G';
  send_all(fd_, &request, 1, where_);
  send_string(fd_, key.data(), key.size(), where_);
  std::vector<char> value;
  std::string waiting_for = fmt::format("key '{}' (did every rank start?)", key);
  STRATA_CHECK(receive_string(fd_, value, Clock::now() + timeout, where_, waiting_for),
               "rendezvous store {}: rank 0 closed the connection", where_);
  return value;
}

void TcpStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  auto deadline = Clock::now() + timeout;
  for (const std::string& key : keys)
    get(key, std::max(std::chrono::milliseconds(1),
                      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now())));
}

Rendezvous open_rendezvous(const ConnectOptions& options) {
  Rendezvous r;
  if (!options.rendezvous_dir.empty()) {
    std::filesystem::create_directories(options.rendezvous_dir);
    r.store = std::make_unique<gloo::rendezvous::FileStore>(options.rendezvous_dir);
    r.where = "file://" + options.rendezvous_dir;
    return r;
  }
  if (options.rank == 0) r.server = std::make_unique<TcpStoreServer>(options.store_port, options.run_id);
  r.store = std::make_unique<TcpStore>(options.master_addr, options.store_port, options.timeout, options.run_id);
  r.where = fmt::format("tcp://{}:{}", options.master_addr, options.store_port);
  return r;
}

}  // namespace strata::dist
