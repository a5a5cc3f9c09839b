# syntax=docker/dockerfile:1
# wsbroker: one static binary (serve, token, probe, events, loadgen, version)
# on a distroless base, running as a non-root user.

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static: the runtime image has no libc. -trimpath keeps build paths out of
# the binary; -buildvcs=false makes the build independent of whether .git is
# part of the build context.
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags="-s -w" \
      -o /out/wsbroker ./cmd/wsbroker

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wsbroker /usr/local/bin/wsbroker
USER nonroot:nonroot
WORKDIR /home/nonroot
# 8080: WebSocket listener; 9090: admin listener (/metrics, /v1/...).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/wsbroker"]
CMD ["serve", "--listen", ":8080", "--admin-listen", ":9090"]
