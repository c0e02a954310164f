export { Device, version, detectDeviceAsync, detectDevice } from "mediasoup-client";
