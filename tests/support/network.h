// TCP ports for the tests' rendezvous stores.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>

namespace strata::testing {

// A TCP socket bound to a loopback port that the kernel picks.
struct LoopbackSocket {
  int fd;
  int port;
};

inline LoopbackSocket bind_loopback_socket() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0);
  return {fd, ntohs(address.sin_port)};
}

// A loopback port that was free a moment ago: its socket is closed again so that
// the store can take it.
inline int free_port() {
  LoopbackSocket socket = bind_loopback_socket();
  ::close(socket.fd);
  return socket.port;
}

}  // namespace strata::testing
