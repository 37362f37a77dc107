// Command fake-gpu-plugin advertises fake GPUs to the test cluster's kubelet.
//
// It speaks the kubelet's device-plugin API v1beta1 (k8s.io/kubelet
// pkg/apis/deviceplugin/v1beta1) as NVIDIA's k8s-device-plugin does: it serves
// DevicePlugin on a socket in the kubelet's device-plugin directory, registers
// the resource (nvidia.com/gpu by default) there, lists its devices as healthy,
// and on Allocate hands the container NVIDIA_VISIBLE_DEVICES with the device
// ids (the plugin's "envvar" strategy). So the scheduler counts and places GPU
// requests exactly as on a cluster with NVIDIA's plugin; only the devices are
// not real. When the kubelet restarts it removes the plugin sockets, and the
// plugin registers again.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices []*pluginapi.Device
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (p *plugin) Allocate(_ context.Context, request *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	response := &pluginapi.AllocateResponse{}
	for _, container := range request.ContainerRequests {
		log.Printf("allocate %s", strings.Join(container.DevicesIds, ","))
		response.ContainerResponses = append(response.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(container.DevicesIds, ",")},
		})
	}
	return response, nil
}

// serve starts the DevicePlugin service on socket and registers it with the kubelet.
func serve(dir, socket, resource string, p *plugin) (*grpc.Server, error) {
	path := filepath.Join(dir, socket)
	_ = os.Remove(path)
	listener, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	server := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(server, p)
	go func() { _ = server.Serve(listener) }()

	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		server.Stop()
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     socket,
		ResourceName: resource,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	if err != nil {
		server.Stop()
		return nil, fmt.Errorf("registering with the kubelet: %w", err)
	}
	return server, nil
}

func main() {
	dir := flag.String("dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin directory")
	resource := flag.String("resource", "nvidia.com/gpu", "extended resource name to advertise")
	count := flag.Int("count", 4, "number of fake devices")
	flag.Parse()

	p := &plugin{}
	for i := 0; i < *count; i++ {
		p.devices = append(p.devices, &pluginapi.Device{ID: fmt.Sprintf("fake-gpu-%d", i), Health: pluginapi.Healthy})
	}
	socket := "vllm-nginx-fake-gpu.sock"
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)

	var server *grpc.Server
	for {
		if server == nil {
			var err error
			if server, err = serve(*dir, socket, *resource, p); err != nil {
				log.Printf("not registered yet: %v", err)
			} else {
				log.Printf("registered %d x %s at %s", *count, *resource, filepath.Join(*dir, socket))
			}
		} else if _, err := os.Stat(filepath.Join(*dir, socket)); err != nil {
			log.Printf("socket gone (kubelet restarted): registering again")
			server.Stop()
			server = nil
			continue
		}
		select {
		case <-stop:
			if server != nil {
				server.Stop()
			}
			_ = os.Remove(filepath.Join(*dir, socket))
			return
		case <-time.After(time.Second):
		}
	}
}
