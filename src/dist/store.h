// Internal: the key-value store ranks meet through. Gloo publishes each rank's
// address there, NCCL rank 0's unique id.
//
// Over TCP, rank 0 serves the store (TcpStoreServer, one thread per client) and
// every rank, rank 0 included, is a client (TcpStore). The server speaks first,
// a greeting the client checks: a client that reached something else on the port
// (another program, or itself: a connect to a port nobody listens on yet can pick
// that port as its own and connect to itself) drops the connection and retries.
// The client answers with its run id (a length-prefixed string); the server
// replies one byte, 1 when it is its own run's, else 0 and it hangs up: a rank of
// another run that reaches this port (two runs given one port, or a port reused
// while a run starts) retries instead of joining the wrong run. Then the protocol
// is two requests, each a byte then length-prefixed strings:
//   'S' key value  -> one byte 1 once stored
//   'G' key        -> the value, as soon as some rank has set the key
// Clients bound every wait by their timeout. Gloo's FileStore is the alternative
// on a shared filesystem.
#pragma once

#include <gloo/rendezvous/store.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "strata/dist/communicator.h"

namespace strata::dist {

class TcpStoreServer {
 public:
  TcpStoreServer(int port, std::string run_id);  // listens on every interface
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

 private:
  void accept_loop();
  void serve(int fd);

  const std::string run_id_;
  int listen_fd_ = -1;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, std::vector<char>> values_;
  std::vector<int> client_fds_;
  std::vector<std::thread> client_threads_;
  bool stopping_ = false;
  std::thread accept_thread_;
};

class TcpStore : public gloo::rendezvous::Store {
 public:
  // Connects to the server, retrying until `timeout` (it may not be up yet).
  TcpStore(const std::string& host, int port, std::chrono::milliseconds timeout, const std::string& run_id);
  ~TcpStore() override;

  void set(const std::string& key, const std::vector<char>& value) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<char> get(const std::string& key, std::chrono::milliseconds timeout);

  std::string where_;  // host:port, for messages
  int fd_ = -1;
  std::chrono::milliseconds timeout_;
};

// The store of a rendezvous; on rank 0 of a TCP rendezvous also its server, which
// must outlive every rank's use of the store (keep it until a barrier has passed).
struct Rendezvous {
  std::unique_ptr<TcpStoreServer> server;
  std::unique_ptr<gloo::rendezvous::Store> store;
  std::string where;  // "tcp://host:port" or "file://dir", for messages
};
Rendezvous open_rendezvous(const ConnectOptions& options);

}  // namespace strata::dist
